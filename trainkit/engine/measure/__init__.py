"""How a run is measured: step timing, memory peaks, NVML samples, FLOPs and MFU, the host's
conditions, the environment and the CPUs a rank may use. Instruments only: none of them trains.
"""
