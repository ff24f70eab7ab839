"""Studies: storage, Pareto fronts, reports and export of a chosen trial (next issue)."""

from __future__ import annotations

__all__: list[str] = []
