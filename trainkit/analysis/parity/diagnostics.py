"""Which diagnostic stands out: a precision's seed-mean numerics (trainkit.engine.cell.diagnostics) beside
fp32's, checked in causal order, so a `better` or `worse` verdict names why the loss moved.

A share stands out STANDS_OUT (5 points) above fp32's; an update size at 2x or 0.5x fp32's. No torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from ...engine.spec.precision_facts import SHORT_DTYPE
from .document import Flag


def _mean(values: list[Any]) -> float | None:
    """Mean of the finite numbers among `values` (a diagnostic can be null, with its reason)."""
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


DIAGNOSTIC_FIGURES = ("grad_zero_share", "grad_subnormal_share", "grad_underflow_share", "grad_nonfinite_count",
                      "update_nonfinite_count",
                      "second_moment_zero_share", "unchanged_share", "update_over_lr_median", "update_over_lr_p90",
                      "update_to_weight_median", "update_to_weight_p90", "loss_scale")


def mean_diagnostics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed mean of each diagnostic figure, with the dtypes and the skipped steps of the run."""
    diags = [r.get("diagnostics") or {} for r in records]
    out: dict[str, Any] = {k: _mean([d.get(k) for d in diags]) for k in DIAGNOSTIC_FIGURES}
    for key in ("grad_dtype", "second_moment_dtype", "trained_dtype", "second_moment_note"):
        out[key] = next((d[key] for d in diags if d.get(key)), None)
    errors = sorted({d["error"] for d in diags if d.get("error")})
    if errors:
        out["errors"] = errors
    steps = [len(r["loss"]["curve"]) for r in records if r.get("loss")]
    skipped = [(r.get("scaler") or {}).get("skipped_steps_total") or 0 for r in records]
    out["skipped_steps_mean"] = _mean(skipped)
    out["skipped_share"] = _mean([s / n for s, n in zip(skipped, steps) if n])
    curves = [(r.get("scaler") or {}).get("scale_curve") for r in records]
    curves = [c for c in curves if c]
    out["loss_scale_curve"] = curves[0] if curves else None
    out["method"] = next((d.get("method") for d in diags if d.get("method")), None)
    return out


def _short(dtype: str | None) -> str:
    name = (dtype or "").split(",")[0].replace("torch.", "")
    return SHORT_DTYPE.get(name, name or "?")


def _pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


DiagnosticRule = Callable[[dict[str, Any], dict[str, Any]], str | None]


def _nonfinite(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
    count, share = p.get("grad_nonfinite_count") or 0, p.get("skipped_share") or 0
    if count <= (ref.get("grad_nonfinite_count") or 0) and share < 0.05:
        return None
    return (f"inf/NaN gradients: {count:g} non-finite gradient elements in the diagnostic step, "
            f"{share:.0%} of the steps skipped by the loss scaler")


STANDS_OUT = 0.05
"""A share this much above fp32's (5 points) is named as the diagnostic that stands out."""


def _share_rule(key: str, describe: Callable[[dict[str, Any], str, str], str]) -> DiagnosticRule:
    """A rule on a share fp32 keeps near 0: named when this precision's is STANDS_OUT above fp32's;
    `describe(p, share, fp32_share)` words it."""
    def rule(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
        share, base = p.get(key), ref.get(key) or 0.0
        if share is None or share - base < STANDS_OUT:
            return None
        return describe(p, _pct(share), _pct(base))
    return rule


_second_moment = _share_rule("second_moment_zero_share", lambda p, share, base: (
    f"optimizer-state underflow: {share} of Adam's second moment (exp_avg_sq, "
    f"{_short(p.get('second_moment_dtype'))}) is exactly 0 (fp32: {base}), so those updates are lr * m / eps"))
_grad_underflow = _share_rule("grad_underflow_share", lambda p, share, base: (
    f"gradient underflow: {share} of gradient elements are zero or subnormal in "
    f"{_short(p.get('grad_dtype'))} (fp32: {base})"))
_rounded_away = _share_rule("unchanged_share", lambda p, share, base: (
    f"updates rounded away: a step left {share} of the {_short(p.get('trained_dtype'))} weights "
    f"unchanged (fp32: {base})"))


def _ratio_rule(key: str, what: str) -> DiagnosticRule:
    def rule(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
        mine, base = p.get(key), ref.get(key)
        if not mine or not base:
            return None
        ratio = mine / base
        if 0.5 < ratio < 2.0:
            return None
        return f"update size: the 90th percentile of {what} is {mine:.3g}, {ratio:.2g}x fp32's ({base:.3g})"

    return rule


DIAGNOSTIC_RULES: tuple[tuple[str, DiagnosticRule], ...] = (
    ("inf/NaN gradients", _nonfinite),
    ("optimizer-state underflow", _second_moment),
    ("gradient underflow", _grad_underflow),
    ("updates rounded away", _rounded_away),
    ("update size", _ratio_rule("update_to_weight_p90", "|update| / |weight|")),
    ("update size", _ratio_rule("update_over_lr_p90", "|update| / lr")),
)
"""What can stand out, in causal order (an underflowing second moment is why updates grow; a
skipped step is why nothing moved), each with its rule: a precision's seed means against fp32's.
Shares stand out 5 points above fp32's; update sizes at 2x or 0.5x fp32's."""


def flags(p: dict[str, Any], ref: dict[str, Any]) -> tuple[Flag, ...]:
    """What stands out in a precision's diagnostic means `p` against fp32's `ref`, in causal order,
    each name once."""
    out: list[Flag] = []
    for name, rule in DIAGNOSTIC_RULES:
        text = rule(p, ref)
        if text and name not in {f.name for f in out}:
            out.append(Flag(name, text))
    return tuple(out)
