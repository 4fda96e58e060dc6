"""Configs, config files, predict options and case names from hypothesis: a one-line
DiffusegError naming the key or file, or a valid result whose every value is finite and in its
documented range; never another exception. (The long run is benchmarks/fuzz.py.)"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffuseg.cli import main
from diffuseg.config import RunConfig, load_config, value_ranges
from diffuseg.core.paths import MAX_NAME_BYTES
from diffuseg.errors import DiffusegError
from diffuseg.inference.predictor import case_name

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

RANGES = value_ranges()  # the ranges declared beside the config fields


def leaves(obj, where: str = ""):
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from leaves(value, path + ".")
        else:
            yield path, value


PATHS = sorted(path for path, _ in leaves(RunConfig()))
NUMBER = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | \
    st.sampled_from([0, 1, -1, 0.5, 1e30, 2**63, 2**64])
SCALAR = NUMBER | st.booleans() | st.none() | st.text(max_size=6) | st.sampled_from(
    ["cpu", "meta", "auto", "cuda:1", "ddpm", "eps", "nan", "1e400"])
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=3), inner, max_size=2), max_leaves=6)
RAW = st.sampled_from(["1e400", "NaN", "-Infinity", "[" * 40 + "]" * 40, "[" * 2000 + "]" * 2000,
                       "[1,", "18446744073709551616", "", "true"])


@st.composite
def overrides(draw) -> list[str]:
    items = []
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS) | st.text(max_size=8))
        if draw(st.booleans()):
            raw = draw(RAW)
        else:
            raw = json.dumps(draw(VALUE), allow_nan=True)
        items.append(f"{path}={raw}")
    return items


def assert_valid(config: RunConfig) -> None:
    """Every number of a built config is finite and inside its documented range."""
    for path, value in leaves(config):
        for item in value if isinstance(value, tuple) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                assert math.isfinite(item), (path, item)
                if path in RANGES:
                    assert item in RANGES[path], (path, item)
    low, high = config.data.ct_window
    assert low < high


def one_line_naming(err: DiffusegError, *needles: str) -> None:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    assert any(n in message for n in needles), (message, needles)


@FUZZ
@given(items=overrides())
def test_overrides_give_a_valid_config_or_one_line(items):
    try:
        config = load_config(None, items)
    except DiffusegError as err:
        keys = [item.split("=")[0].strip() for item in items]
        parts = [part for k in keys for part in (k, k.split(".")[0], k.rsplit(".", 1)[-1])]
        one_line_naming(err, *parts, *(repr(p)[1:-1] for p in parts))
        return
    assert_valid(config)


CONFIG_TEXT = st.binary(max_size=60) | st.sampled_from(
    [b"null", b"[]", b"1", b"\"x\"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
     b"[" * 40 + b"]" * 40, b"{\"a\":" * 3000 + b"1" + b"}" * 3000]) | st.dictionaries(
    st.sampled_from(["train", "network", "data", "sample", "process", "method", "x",
                     "spatial_dims"]), VALUE, max_size=3).map(
    lambda d: json.dumps(d, allow_nan=True).encode())


@FUZZ
@given(text=CONFIG_TEXT)
def test_config_files_give_a_valid_config_or_one_line(text):
    folder = Path(tempfile.mkdtemp(prefix="diffuseg-fuzz-"))
    try:
        path = folder / "cfg.json"
        path.write_bytes(text)
        try:
            config = load_config(path)
        except DiffusegError as err:
            one_line_naming(err, "cfg.json", "config '")
            return
        assert_valid(config)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


OPTION_VALUES = {"--samples": ["1", "0", "-3", "100000", "1e3", "x", str(2**70)],
                 "--steps": ["1", "0", "-5", str(2**64)],
                 "--seed": ["0", "-1", str(2**63), str(2**64), "1.5"],
                 "--device": ["cpu", "meta", "1", "cuda:99", "auto", "", "cuda:x"]}


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.integers(0, 6),
                               min_size=1))
def test_predict_options_exit_2_with_one_line(options, tmp_path, monkeypatch, capsys):
    """Options are checked before the run folder is opened (here it does not exist): a bad one
    is 'error: ...' (or click's usage error), exit 2; good ones reach the missing run folder."""
    args = ["predict", str(tmp_path / "no-run"), "-i", str(tmp_path), "-o", str(tmp_path / "o")]
    for option, index in options.items():
        values = OPTION_VALUES[option]
        args += [option, values[index % len(values)]]
    monkeypatch.setattr(sys, "argv", ["diffuseg", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert (len(lines) == 1 and lines[0].startswith("error: ")) or "Usage:" in err, err


NAME = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300) | \
    st.sampled_from(["", ".", "..", "...", ". .", " ..", "a/../..", "../x"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(stem=NAME, ending=st.sampled_from([".png", ".nii.gz", "_0000.png", ".tif", ""]))
def test_case_names_are_one_safe_folder_inside_the_output(stem, ending):
    name = case_name(Path("in") / (stem.replace("/", "_") + ending))
    out = Path("/tmp/out")
    assert name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    assert (out / name).resolve().parent == out  # never the parent of -o
    assert len(name.encode()) <= MAX_NAME_BYTES + 9  # + "-" and an 8-digit hash
