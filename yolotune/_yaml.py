"""YAML for the files users write: PyYAML's safe loader, refusing a key given twice in one mapping.

It can also read ``1e-4`` as a number, as YAML 1.2 and JSON do (PyYAML's YAML 1.1 reads it as a string).

PyYAML keeps the last of two equal keys without a word, so a plan with ``ratios:`` twice would
silently lose the first. The error is PyYAML's own (``ConstructorError``), with the line and
column of the second key, so every caller's ``yaml.YAMLError`` handling names it in one line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load"]

_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *defaults` then overriding a key is not a duplicate
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _ExponentLoader(_StrictLoader):
    """``_StrictLoader`` reading ``1e-4`` and ``1.0e4`` as numbers, as YAML 1.2 and JSON do.

    PyYAML (YAML 1.1) reads an exponent as a number only with a dot and a signed exponent (``1.0e-4``).
    """


_ExponentLoader.add_implicit_resolver(  # type: ignore[no-untyped-call]
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load(text: str, *, exponents: bool = True) -> Any:
    """Parse one YAML document like ``yaml.safe_load``, refusing duplicate keys.

    Args:
        text: The document.
        exponents: Read ``1e-4`` as a number (plans, spaces, targets). Off for files another
            tool reads too (a data yaml: Ultralytics reads ``1e5`` in its names as text).

    Raises:
        yaml.YAMLError: Invalid YAML, or a key given twice in one mapping.
    """
    return yaml.load(text, Loader=_ExponentLoader if exponents else _StrictLoader)  # SafeLoader subclasses: safe
