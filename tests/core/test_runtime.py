"""Device and autocast helpers live in diffuseg.core.runtime; the predictor does not load the
trainer."""

import subprocess
import sys

import pytest
import torch

from diffuseg.core.runtime import (
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    default_precision,
    resolve_device,
)
from diffuseg.errors import ConfigError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not valid"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_autocast_dtype_and_context():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_training_reexports_runtime_names():
    import diffuseg.core.runtime as runtime
    import diffuseg.training.loop as training

    for name in ("resolve_device", "autocast", "autocast_dtype", "cpu_has_native_bf16"):
        assert getattr(training, name) is getattr(runtime, name)


def test_inference_does_not_import_training():
    code = ("import sys, diffuseg.inference.predictor; "
            "print(any(m.startswith('diffuseg.training.loop') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_diffuseg_precision_replaces_the_default_only(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("DIFFUSEG_PRECISION", raising=False)
    native = torch.bfloat16 if cpu_has_native_bf16() else None
    assert default_precision() == "auto" and autocast_dtype("auto", cpu) is native
    for value, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("auto", native)):
        monkeypatch.setenv("DIFFUSEG_PRECISION", value)
        assert autocast_dtype("auto", cpu) is dtype
        assert autocast_dtype("fp32", cpu) is None  # an explicit choice is kept
        assert autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setenv("DIFFUSEG_PRECISION", "")  # empty: as unset
    assert autocast_dtype("auto", cpu) is native


def test_bad_diffuseg_precision_is_one_line_naming_variable_value_and_choices(monkeypatch):
    monkeypatch.setenv("DIFFUSEG_PRECISION", "float16")
    with pytest.raises(ConfigError) as info:
        autocast_dtype("auto", torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert all(word in message for word in ("DIFFUSEG_PRECISION", "'float16'", "fp32, bf16, auto"))

