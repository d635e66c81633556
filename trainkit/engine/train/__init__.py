"""How a run trains: the training loop and its accumulation window, the precision policies,
main gradients, FP8, torch.compile and activation checkpointing.
"""
