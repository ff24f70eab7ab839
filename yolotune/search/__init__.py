"""The search: runs candidates (and, next, the study driver over Optuna and Ray)."""

from __future__ import annotations

from yolotune.search._candidate import CandidateResult, CandidateSettings, check_plan, run_candidate

__all__ = ["CandidateResult", "CandidateSettings", "check_plan", "run_candidate"]
