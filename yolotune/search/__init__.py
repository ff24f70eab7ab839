"""The search: runs candidates and drives the study (ask → run candidate → tell)."""

from __future__ import annotations

from yolotune.search._candidate import CandidateResult, CandidateSettings, check_plan, run_candidate
from yolotune.search._driver import (
    METRIC_NAMES,
    SearchConfig,
    TrialOutcome,
    constraints_of,
    open_study,
    plan_of,
    run_search,
    search_spaces,
)
from yolotune.search._spaces import load_space

__all__ = [
    "METRIC_NAMES",
    "CandidateResult",
    "CandidateSettings",
    "SearchConfig",
    "TrialOutcome",
    "check_plan",
    "constraints_of",
    "load_space",
    "open_study",
    "plan_of",
    "run_candidate",
    "run_search",
    "search_spaces",
]
