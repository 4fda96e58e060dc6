"""ONNX export of a run's denoiser and an ONNX Runtime predictor that samples with it.

Only the network that runs once per sampling step, ``method.denoiser`` (the methods with
``Method.onnx_exportable``), is exported: the sampler loop, the process maths, and the
once-per-call networks (ldseg's image encoder and mask decoder, cimd's prior) stay in torch.
``onnx_predictor(run)`` loads the run with
``Predictor.from_run`` and puts an ``OrtDenoiser`` in place of ``method.denoiser``, so the very
same ``sample`` loop runs with ONNX Runtime evaluating each step.

The example inputs are captured from a real ``sample`` call (a forward pre-hook on the
denoiser), so export needs no knowledge of a method's inputs. The batch axis is dynamic (any
number of samples x images), and so is each spatial axis, as a multiple of 2^(levels - 1).

``export_onnx`` writes ``inference.json`` beside the run's weights: the ONNX file, exporter,
opset, input shapes, the ONNX Runtime threads and the batch per step (``sample.n_samples`` for
one image), and the largest difference between ONNX Runtime and eager outputs on the example.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from diffuseg.errors import ConfigError, DataError
from diffuseg.inference.predictor import Predictor, write_json
from diffuseg.methods import Method
from diffuseg.methods.base import methods_where

Exporter = Literal["dynamo", "torchscript"]
ONNX_NAME = "denoiser.onnx"
INFO_NAME = "inference.json"


def denoiser_of(method: Method) -> nn.Module:
    net = getattr(method, "denoiser", None)
    if not method.onnx_exportable or not isinstance(net, nn.Module):
        names = ", ".join(methods_where(lambda m: m.onnx_exportable))
        raise ConfigError(f"method '{method.name}' has no per-step denoiser to export; ONNX export "
                          f"supports the diffusion methods ({names})")
    return net


def capture_denoiser_inputs(method: Method, spatial: tuple[int, ...], n_samples: int = 2
                            ) -> dict[str, Tensor]:
    """The denoiser's inputs, by argument name, at its first call inside
    ``method.sample(zeros [1, C, *spatial], n_samples, steps=1)``."""
    net = denoiser_of(method)
    signature = inspect.signature(net.forward)
    captured: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not captured:
            bound = signature.bind(*args, **kwargs).arguments
            captured.update({k: v.detach().clone() for k, v in bound.items()
                             if isinstance(v, Tensor)})

    handle = net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        image = torch.zeros(1, method.config.in_channels, *spatial, device=method.device)
        method.sample(image, n_samples, steps=1, generator=torch.Generator(image.device))
    finally:
        handle.remove()
    return {k: v.contiguous() for k, v in captured.items()}


class _Positional(nn.Module):
    """``net(**dict(zip(names, tensors)))``: exporters take positional inputs."""

    def __init__(self, net: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.net(**dict(zip(self.names, tensors, strict=True)))


def _dynamic(inputs: dict[str, Tensor], spatial_dims: int, factor: int, exporter: Exporter):
    """Dynamic axes: 0 (batch) everywhere; spatial axes of ``[B, C, *sp]`` inputs as
    multiples of ``factor`` (torch.export's derived dims) or free (TorchScript)."""
    if exporter == "torchscript":
        axes = {}
        for name, x in inputs.items():
            axes[name] = {0: "batch"}
            if x.ndim == spatial_dims + 2:
                axes[name].update({2 + i: f"s{i}" for i in range(spatial_dims)})
        axes["out"] = {0: "batch", **{2 + i: f"s{i}" for i in range(spatial_dims)}}
        return axes
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=65536)
    sizes = [factor * dim(f"s{i}", min=1, max=4096) for i in range(spatial_dims)]
    shapes = []
    for x in inputs.values():
        spec = {0: batch}
        if x.ndim == spatial_dims + 2:
            spec.update({2 + i: s for i, s in enumerate(sizes)})
        shapes.append(spec)
    return (tuple(shapes),)  # one entry: forward's *tensors


def export_onnx(method: Method, path: str | Path, *, exporter: Exporter = "dynamo",
                spatial: tuple[int, ...] | None = None) -> dict:
    """Write ``method.denoiser`` as ONNX to ``path``; returns a description (names, shapes,
    opset, ``max_abs_error`` of ONNX Runtime against eager on the captured example).

    ``exporter``: "dynamo" (torch.export, torch's default; needs onnxscript) or "torchscript"
    (the legacy tracer, deprecated by torch but about 5x faster to export)."""
    if exporter not in ("dynamo", "torchscript"):
        raise ConfigError(f"exporter={exporter!r} is unknown; use 'dynamo' or 'torchscript'")
    config = method.config
    factor = 2 ** (len(config.network.channels) - 1)
    patch = tuple(spatial or config.data.patch_size)
    # an example of at least 2 x the total stride (x ldseg's latent factor) keeps torch.export
    # from specialising a spatial axis to one multiple
    spatial = tuple(max(p, 2 * factor * getattr(method, "factor", 1)) for p in patch)
    method.eval()
    inputs = capture_denoiser_inputs(method, spatial)
    names = list(inputs)
    module = _Positional(denoiser_of(method), names).eval()
    args = tuple(inputs.values())
    dynamic = _dynamic(inputs, config.spatial_dims, factor, exporter)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable here
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"],
                              dynamo=True, dynamic_shapes=dynamic, external_data=False,
                              verbose=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"],
                              dynamo=False, dynamic_axes=dynamic)
        expected = module(*args).float().cpu().numpy()
    session = make_session(path, threads=1)
    got = session.run(None, {k: v.cpu().numpy() for k, v in inputs.items()})[0]
    return {"onnx": path.name, "exporter": exporter, "opset": _opset(path),
            "inputs": {k: list(v.shape) for k, v in inputs.items()},
            "dynamic": "batch; spatial axes as multiples of " + str(factor),
            "max_abs_error": float(np.abs(got - expected).max())}


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_run(run_dir: str | Path, output: str | Path | None = None, *,
               exporter: Exporter = "dynamo", threads: int | None = None) -> Path:
    """Export a run's denoiser (EMA weights) to ``output`` (default ``RUN/denoiser.onnx``) and
    write ``RUN/inference.json`` (threads default: torch's current intra-op threads)."""
    import onnxruntime

    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, device="cpu", precision="fp32")
    path = Path(output) if output is not None else run_dir / ONNX_NAME
    info = export_onnx(predictor.method, path, exporter=exporter)
    info.update({
        "onnx": os.path.relpath(path.resolve(), run_dir.resolve()),
        "threads": threads or torch.get_num_threads(),
        "batch_size": predictor.config.sample.n_samples,  # samples x 1 image, per step
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
    })
    write_json(run_dir / INFO_NAME, info)
    return path


def make_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX file '{path}' does not exist; run 'diffuseg export RUN --onnx'")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtDenoiser(nn.Module):
    """Stands in for ``method.denoiser``: the same call signature ``(x, t, cond=None,
    emb=None) -> Tensor``, evaluated by an ONNX Runtime session (float32, on the CPU)."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None,
                emb: Tensor | None = None) -> Tensor:
        given = {"x": x, "t": t, "cond": cond, "emb": emb}
        feeds = {}
        for name in self.names:
            value = given[name]
            if value is None:
                raise DataError(f"the ONNX denoiser needs input '{name}', which was not given")
            value = value.detach().cpu().contiguous()
            feeds[name] = (value if name == "t" else value.float()).numpy()
        out = self.session.run(None, feeds)[0]
        return torch.from_numpy(out).to(x.device)


def onnx_predictor(run_dir: str | Path, *, model: str | Path | None = None,
                   threads: int | None = None) -> Predictor:
    """``Predictor.from_run(run)`` (CPU, fp32) with the ONNX denoiser in place of the torch one.
    ``model`` defaults to inference.json's file, else ``RUN/denoiser.onnx``; ``threads`` to
    inference.json's, else ORT's default."""
    run_dir = Path(run_dir)
    info_path = run_dir / INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    model = Path(model) if model is not None else run_dir / info.get("onnx", ONNX_NAME)
    predictor = Predictor.from_run(run_dir, device="cpu", precision="fp32")
    denoiser_of(predictor.method)
    predictor.method.denoiser = OrtDenoiser(make_session(model, threads or info.get("threads")))
    return predictor


__all__ = ["OrtDenoiser", "capture_denoiser_inputs", "export_onnx", "export_run",
           "make_session", "onnx_predictor"]
