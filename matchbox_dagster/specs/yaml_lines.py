"""The line of a place in a component's ``defs.yaml`` (for messages that name file and line)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml


def locate(path: Path, where: Sequence[str | int]) -> int | None:
    """1-based line of ``where`` (keys and indices under ``attributes``) in ``path``.

    The deepest part of ``where`` present in the file is found (a missing key points at its
    parent); None when the file cannot be read or parsed.
    """
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if node is None:
        return None
    line = node.start_mark.line
    for part in ("attributes", *where):
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if getattr(key, "value", None) == str(part):
                    child = (key, value)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                child = (node.value[part], node.value[part])
        if child is None:
            break
        line = child[0].start_mark.line
        node = child[1]
    return line + 1
