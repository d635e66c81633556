"""trainkit: measure what precision and gradient accumulation really do to PyTorch training."""

from .config import RunConfig

__all__ = ["RunConfig"]
__version__ = "0.1.0"
