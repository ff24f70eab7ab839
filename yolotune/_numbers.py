"""What counts as a number in user input: Python's and numpy's, never a bool (``True`` is an int)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_real", "is_whole"]


def is_whole(value: Any) -> bool:
    """A whole number: ``int`` or a numpy integer (a trial number from ``trials_dataframe()``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number that is not NaN: ``int``, ``float`` or a numpy number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
