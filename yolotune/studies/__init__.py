"""Studies: storage, Pareto fronts, reports, the dashboard and export of a chosen trial."""

from __future__ import annotations

from yolotune.studies._dashboard import serve_dashboard
from yolotune.studies._export import ExportResult, export_trial, study_target
from yolotune.studies._front import FrontRow, fp32_reference, pareto_front, speed_notes, speedup_of
from yolotune.studies._report import write_report
from yolotune.studies._retimed import (
    NOISE_BAND,
    SIZE_TOLERANCE,
    RetimedPoint,
    Retiming,
    current_retiming,
    near_front,
)
from yolotune.studies._storage import (
    artifact_dir,
    default_storage_url,
    delete_study,
    deployable_file,
    find_artifact_dir,
    live_searches,
    load_study,
    open_storage,
    recorded_folder,
    refuse_if_searched,
    searching,
    shown_url,
    storage_lock,
    study_dir,
    study_folder,
)
from yolotune.studies._summary import StudySummary, constraints_of, summarize

__all__ = [
    "NOISE_BAND",
    "SIZE_TOLERANCE",
    "ExportResult",
    "FrontRow",
    "RetimedPoint",
    "Retiming",
    "StudySummary",
    "artifact_dir",
    "constraints_of",
    "current_retiming",
    "default_storage_url",
    "delete_study",
    "deployable_file",
    "export_trial",
    "find_artifact_dir",
    "fp32_reference",
    "live_searches",
    "load_study",
    "near_front",
    "open_storage",
    "pareto_front",
    "recorded_folder",
    "refuse_if_searched",
    "searching",
    "serve_dashboard",
    "shown_url",
    "speed_notes",
    "speedup_of",
    "storage_lock",
    "study_dir",
    "study_folder",
    "study_target",
    "summarize",
    "write_report",
]
