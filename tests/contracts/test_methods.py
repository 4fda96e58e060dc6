"""The contract every registered method satisfies, in 2D and 3D (and with K = 3 labels where the
method models several): sample shapes and range, seeding, gradients to every trained parameter,
a safetensors save/load round trip, typed options, the declared process; and that methods are
leaves (no method module imports another)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import SIZE, gen, tiny_config

import diffuseg.methods  # noqa: F401  (registers every method)
from diffuseg.config import ProcessConfig, RunConfig
from diffuseg.errors import ConfigError
from diffuseg.methods import METHODS, build_method
from diffuseg.processes import PROCESSES
from diffuseg.run.weights import load_networks, load_state, save_networks
from diffuseg.sampling.samplers import DEFAULT

OPTIONS = {"ldseg": {"width": 8}, "ensemble": {"members": 2}}  # small enough for the tiny nets
CASES = [pytest.param(name, dims, k, id=f"{name}-{dims}d-k{k}")
         for name in sorted(METHODS) for dims, k in ((2, 1), (3, 1), (2, 3))
         if not (METHODS[name].binary_only and k > 1)]


def config(name: str, dims: int = 2, k: int = 1, **overrides) -> RunConfig:
    options = {**OPTIONS.get(name, {}), **overrides}
    return tiny_config(name, dims, k, process=ProcessConfig(T=20), steps=2, **options)


def build(name: str, dims: int = 2, k: int = 1, seed: int = 0):
    """The method with every all-zero tensor (output convolutions, biases) made random, so that
    nothing hides behind a zero-initialised layer."""
    torch.manual_seed(seed)
    method = build_method(config(name, dims, k))
    g = gen(seed)
    with torch.no_grad():
        for p in method.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return method


def batch(dims: int, k: int, b: int = 2, seed: int = 0) -> dict:
    g = gen(seed)
    sp = SIZE[dims]
    return {"image": torch.randn(b, 1, *sp, generator=g),
            "mask": torch.randint(0, max(k, 2), (b, 1, *sp), generator=g)}


@pytest.mark.parametrize("name, dims, k", CASES)
class TestMethodContract:
    def test_samples_have_the_shape_and_range(self, name, dims, k):
        method = build(name, dims, k).eval()
        s = method.sample(batch(dims, k)["image"], 3, generator=gen(5))
        assert s.shape == (3, 2, k, *SIZE[dims])
        assert torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1
        if k > 1:
            torch.testing.assert_close(s.sum(2), torch.ones_like(s.sum(2)))

    def test_same_seed_same_samples_other_seed_other_samples(self, name, dims, k):
        method = build(name, dims, k).eval()
        image = batch(dims, k)["image"]
        s = method.sample(image, 3, generator=gen(5))
        assert torch.equal(s, method.sample(image, 3, generator=gen(5)))
        other = method.sample(image, 3, generator=gen(6))
        assert torch.equal(s, other) != method.stochastic

    def test_gradients_reach_every_trained_parameter(self, name, dims, k):
        """Two training steps' losses (HiDiff trains its two networks in turns)."""
        method = build(name, dims, k).train()
        for step in range(2):
            terms = method.loss(batch(dims, k, seed=step), generator=gen(step))
            assert terms["loss"].ndim == 0
            assert all(torch.isfinite(v).all() for v in terms.values())
            terms["loss"].backward()
        for net_name, net in method.networks().items():
            for p_name, p in net.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{net_name}.{p_name}"
                assert p.grad.abs().sum() > 0, f"{net_name}.{p_name}"

    def test_save_load_round_trip_gives_identical_samples(self, name, dims, k, tmp_path: Path):
        trained, fresh = build(name, dims, k, seed=0).eval(), build(name, dims, k, seed=1).eval()
        save_networks(trained.networks(), tmp_path / "model.safetensors")
        load_networks(fresh.networks(), load_state(tmp_path / "model.safetensors"))
        image = batch(dims, k)["image"]
        torch.testing.assert_close(fresh.sample(image, 2, generator=gen(3)),
                                   trained.sample(image, 2, generator=gen(3)), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# declarations: options, process, sampler and steps


@pytest.mark.parametrize("name", sorted(METHODS))
def test_options_are_a_typed_dataclass_and_unknown_keys_are_refused(name):
    cls = METHODS[name]
    assert dataclasses.is_dataclass(cls.options_type)
    assert isinstance(build_method(config(name)).options, cls.options_type)
    fields = [f.name for f in dataclasses.fields(cls.options_type)]
    wrong = f"{fields[0]}x" if fields else "anything"
    match = (f"did you mean 'method.options.{fields[0]}'" if fields
             else "unknown config key 'method.options")
    with pytest.raises(ConfigError, match=match):
        build_method(config(name, **{wrong: 1}))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_method_declares_its_process_and_sampling(name):
    cls = METHODS[name]
    method = build_method(config(name))
    if cls.process_kind is None:
        assert method.process is None and method.sampling(5) == (None, None)
        return
    assert method.process.kind == cls.process_kind  # process.kind unset: the method's
    assert method.sampling(None) == (DEFAULT[cls.process_kind], method.default_steps())
    assert method.sampling(3) == (DEFAULT[cls.process_kind], 3)
    for bad in (0, 21):
        with pytest.raises(ConfigError, match="out of range"):
            method.sampling(bad)
    other = next(kind for kind in sorted(PROCESSES) if kind != cls.process_kind)
    contradicting = config(name)
    contradicting.process.kind = other
    with pytest.raises(ConfigError, match="contradicts"):
        build_method(contradicting)
    agreeing = config(name)
    agreeing.process.kind = cls.process_kind
    assert build_method(agreeing).process.kind == cls.process_kind


@pytest.mark.parametrize("name", ["berdiff", "hidiff"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp"])
def test_a_sampler_the_process_cannot_run_is_refused(name, sampler):
    cfg = config(name)
    cfg.sample.sampler = sampler
    with pytest.raises(ConfigError, match=f"sample.sampler='{sampler}' cannot run a bernoulli"):
        build_method(cfg)


# ------------------------------------------------------------------------------------------
# methods are leaves

METHODS_DIR = Path(diffuseg.methods.__file__).parent
SHARED = {"__init__", "base", "parts", "targets", "sdf", "wavelets", "conditional"}  # shared


def test_no_method_module_imports_another_method_module():
    modules = {p.stem for p in METHODS_DIR.glob("*.py")}
    for path in sorted(METHODS_DIR.glob("*.py")):
        if path.stem in SHARED:
            continue
        tree = ast.parse(path.read_text())
        assert any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register"
                   for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                   for d in node.decorator_list), f"{path.name} is neither shared nor a method"
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            imported |= {n.split(".")[2] for n in names
                         if n.startswith("diffuseg.methods.") and n.split(".")[2] in modules}
        assert imported <= SHARED, f"{path.name} imports method module(s) {imported - SHARED}"
