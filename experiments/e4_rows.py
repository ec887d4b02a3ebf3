"""E4's row names and swept thresholds, shared by the experiment and its report writer."""

from __future__ import annotations

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH

F_THS = (0.3, 0.5, 0.7)
S_THS = (0.1, 0.2, 0.3)
BASELINE = "baseline (no fusion)"
NO_GATES = "Eq. 7 running QWFA (no gates)"
RUNNING_MEAN = "running mean (no quality, no gates)"
STRICT = f"f_th={PAPER_F_TH}, s_th={PAPER_S_TH}, paper-strict seed"
CHOSEN_PREFIX = "chosen on validation"
GIVEN_PREFIX = "given (calibrated)"


def sweep_name(f_th: float, s_th: float) -> str:
    return f"f_th={f_th}, s_th={s_th}"


def chosen_name(pair: str) -> str:
    return f"{CHOSEN_PREFIX}: {pair}"


def paper_name() -> str:
    return f"paper default: {sweep_name(PAPER_F_TH, PAPER_S_TH)}"


def given_name(f_th: float, s_th: float) -> str:
    return f"{GIVEN_PREFIX}: {sweep_name(f_th, s_th)}"
