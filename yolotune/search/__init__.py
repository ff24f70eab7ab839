"""The search: runs candidates and drives the study (ask → run candidate → tell)."""

from __future__ import annotations

from yolotune.search._baseline import UNTRAINED_MAP50_95, untrained
from yolotune.search._candidate import (
    RUNG0_RECOVERY_IMAGES,
    BuiltCandidate,
    CandidateResult,
    CandidateSettings,
    build_candidate,
    check_candidate,
    check_plan,
    make_target,
    run_candidate,
    time_candidate,
)
from yolotune.search._config import METRIC_NAMES, SearchConfig, TrialOutcome
from yolotune.search._driver import preflight, run_search, search_spaces
from yolotune.search._executors import check_ray_address
from yolotune.search._retime import retime_front, retime_study
from yolotune.search._sensitivity import SENSITIVITY_RECOVERY, GroupSensitivity, Sensitivity, scan_sensitivity
from yolotune.search._spaces import load_space
from yolotune.search._study import constraints_of, open_study
from yolotune.search._trials import evaluated, plan_of

__all__ = [
    "METRIC_NAMES",
    "RUNG0_RECOVERY_IMAGES",
    "SENSITIVITY_RECOVERY",
    "UNTRAINED_MAP50_95",
    "BuiltCandidate",
    "CandidateResult",
    "CandidateSettings",
    "GroupSensitivity",
    "SearchConfig",
    "Sensitivity",
    "TrialOutcome",
    "build_candidate",
    "check_candidate",
    "check_plan",
    "check_ray_address",
    "constraints_of",
    "evaluated",
    "load_space",
    "make_target",
    "open_study",
    "plan_of",
    "preflight",
    "retime_front",
    "retime_study",
    "run_candidate",
    "run_search",
    "scan_sensitivity",
    "search_spaces",
    "time_candidate",
    "untrained",
]
