"""The search: runs candidates (and, next, the study driver over Optuna and Ray)."""

from __future__ import annotations

from yolotune.search._candidate import CandidateResult, CandidateSettings, check_plan, run_candidate
from yolotune.search._driver import METRIC_NAMES, SearchConfig, TrialOutcome, open_study, plan_of, run_search

__all__ = [
    "METRIC_NAMES",
    "CandidateResult",
    "CandidateSettings",
    "SearchConfig",
    "TrialOutcome",
    "check_plan",
    "open_study",
    "plan_of",
    "run_candidate",
    "run_search",
]
