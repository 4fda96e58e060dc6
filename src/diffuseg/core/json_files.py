"""JSON files that users write (configs, dataset.json, splits.json), read by ``read_json``:
UTF-8 (a BOM is allowed), at most ``MAX_JSON_BYTES``, nesting at most ``MAX_JSON_DEPTH`` deep, no
NaN/Infinity; every failure is one line naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffuseg.errors import ConfigError, DiffusegError

MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 16 * 2**20



def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (JSON has no NaN/Infinity)")


def loads(text: str, where: str, error: type[DiffusegError] = ConfigError) -> Any:
    """Parse JSON text; refuse NaN/Infinity and nesting deeper than MAX_JSON_DEPTH."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; flatten it") from None
    except ValueError as err:  # JSONDecodeError is a ValueError
        reason = " ".join(str(err).split())
        raise error(f"{where} is not valid JSON ({reason}); fix the syntax") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise error(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return data


def json_depth(data: Any) -> int:
    """Nesting depth of lists/dicts (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((v, depth) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json(path: str | Path, what: str = "config file",
              error: type[DiffusegError] = ConfigError, *, mapping: bool = True) -> Any:
    """Read a JSON file that a user wrote: one-line errors for a missing, huge, non-UTF-8,
    malformed, too deeply nested or (with ``mapping``) non-object file."""
    path = Path(path)
    where = f"{what} '{path}'"
    if not path.is_file():
        raise error(f"{where} does not exist; check the path")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{where} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit for "
                        "JSON files; is it the right file?")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{where} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise error(f"{where} cannot be read ({err.strerror}); check its permissions") from None
    data = loads(text, where, error)
    if mapping and not isinstance(data, dict):
        raise error(f"{where} must hold a JSON object {{...}}, got {_json_type(data)}")
    return data


def _json_type(data: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(data), type(data).__name__)
