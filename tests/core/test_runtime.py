"""Device and autocast helpers live in diffuseg.core.runtime; the predictor does not load the
trainer."""

import subprocess
import sys

import pytest
import torch

from diffuseg.core.runtime import autocast, autocast_dtype, resolve_device
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
            "print(any(m.startswith('diffuseg.training') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
