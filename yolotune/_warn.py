"""Warnings said once per process: a run loads its space and data more than once."""

from __future__ import annotations

import logging

__all__ = ["warn_once"]

_SAID: set[tuple[str, str]] = set()


def warn_once(logger: logging.Logger, message: str, *args: object) -> None:
    """Log ``message % args`` as a warning on ``logger``, unless this process already said it there."""
    key = (logger.name, message % args if args else message)
    if key not in _SAID:
        _SAID.add(key)
        logger.warning(message, *args)
