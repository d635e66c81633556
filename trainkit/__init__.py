"""trainkit: measure what precision and gradient accumulation really do to PyTorch training.

The engine (``trainkit.engine``) is the library; ``trainkit.commands`` holds ``python -m trainkit``'s
commands, which stand on the engine and on the reports (``reports``).
"""

from .engine.spec.config import RunConfig

__all__ = ["RunConfig"]
__version__ = "0.1.0"
