"""Studies: storage, Pareto fronts (reports and export of a chosen trial come next)."""

from __future__ import annotations

from yolotune.studies._front import FrontRow, pareto_front
from yolotune.studies._storage import default_storage_url, open_storage, study_dir

__all__ = ["FrontRow", "default_storage_url", "open_storage", "pareto_front", "study_dir"]
