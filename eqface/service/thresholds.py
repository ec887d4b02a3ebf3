"""Which aggregation thresholds the service uses, and where each came from.

Rule, per threshold (f_th, s_th; QWFAF's threshold is reported for completeness — enrolment from images uses QWFA,
which E3 measured best, and has no threshold):

1. an explicit flag (``--f-th``/``--s-th``, ``ServiceConfig.f_th``/``s_th``) wins;
2. otherwise the served model's calibrated value: Triton's model config ``parameters`` under
   ``eqface.contract.THRESHOLD_KEYS``, written there from the ONNX metadata by the repository writer and re-read at
   start and whenever the probe sees the served model change (a redeployed version brings its own values);
3. otherwise (feature mode without Triton, or a model exported without calibration) the paper's values
   (``PAPER_F_TH`` 0.5, ``PAPER_S_TH`` 0.3), with a warning: they were fitted to the paper's model, not this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, Thresholds

Source = Literal["flag", "model", "paper_default"]
SOURCES: tuple[Source, ...] = ("flag", "model", "paper_default")


@dataclass(frozen=True)
class ResolvedThresholds:
    """The thresholds in use, each with its source."""

    f_th: float
    s_th: float
    qwfaf_s_th: float
    sources: Mapping[str, Source]

    def describe(self) -> str:
        return ", ".join(f"{name} {getattr(self, name):.4f} ({self.sources[name]})" for name in self.sources)


def resolve_thresholds(
    f_th_flag: float | None, s_th_flag: float | None, served: Thresholds | None
) -> ResolvedThresholds:
    """Applies the module's rule to the flags and the served model's calibrated thresholds (None: none served)."""

    def pick(flag: float | None, model: float | None, paper: float) -> tuple[float, Source]:
        if flag is not None:
            return flag, "flag"
        if model is not None:
            return model, "model"
        return paper, "paper_default"

    f_th, f_source = pick(f_th_flag, served.f_th if served else None, PAPER_F_TH)
    s_th, s_source = pick(s_th_flag, served.s_th if served else None, PAPER_S_TH)
    qwfaf, q_source = pick(None, served.qwfaf_s_th if served else None, PAPER_S_TH)
    return ResolvedThresholds(f_th, s_th, qwfaf, {"f_th": f_source, "s_th": s_source, "qwfaf_s_th": q_source})
