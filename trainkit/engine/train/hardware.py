"""The engine's description of the hardware cells will run on, as a probe worker saw it.

It is what the axes' skip rules ask of the hardware (trainkit.engine.spec.axes.Hardware), and it
answers whether a precision mode can run from the mode's own policy, so the skip rule stays in the
engine: spec's axes -> this type -> the policy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """What the cells will run on, as a probe worker saw it (see the module docstring)."""

    device: str  # "cpu" or "cuda"
    gpu_count: int = 0
    capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    cpu_count: int = 1
    compile_unsupported: str | None = None
    """Why torch.compile cannot run here (no C++ compiler on a CPU), or None."""

    def precision_unsupported(self, precision: str) -> str | None:
        """The policy's answer, never restated here."""
        # torch, imported only once cells are built: the bench collects its matrix, and parses its
        # options, from the torch-free spec room and this type alone.
        from .precision import policy_class

        return policy_class(precision).unsupported_on(self.device, self.capability, self.gpu_name)
