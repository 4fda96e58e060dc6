"""The process kinds: ``PROCESSES[kind]`` is the class that a method's ``process_kind`` names.

A process module registers its class with ``@register_process`` (the class's ``kind``); the
package imports every module of ``diffuseg/processes/`` on first import, so a new kind is one new
file (docs/adding_a_method.md).
"""

from __future__ import annotations

from typing import Any

PROCESSES: dict[str, Any] = {}


def register_process(cls: type) -> type:
    """Class decorator: ``PROCESSES[cls.kind] = cls``; a kind registered twice is a bug."""
    assert cls.kind not in PROCESSES, f"process kind {cls.kind!r} registered twice"
    PROCESSES[cls.kind] = cls
    return cls
