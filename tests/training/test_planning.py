"""Plans that fit the data and the machine: values with reasons, overridable, CPU steps small."""

import json

import pytest

from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.errors import ConfigError
from diffuseg.training.planning import Hardware, make_plan, step_macs
from diffuseg.training.start import build_config

CPU2 = Hardware("cpu", 2, "avx2")
GPU = Hardware("gpu", 16, "avx512", "test-gpu", 80.0)


def fp(dims, shape, n=100, channels=1, raters=1):
    return {"spatial_dims": dims, "in_channels": channels, "labels": {"bg": 0, "fg": 1},
            "raters": raters, "n_cases": n, "median_shape": shape,
            "median_spacing": [1.0] * dims}


def test_every_value_has_a_reason_and_fits_the_config():
    plan = make_plan(".", "cpu", hardware=CPU2, fp=fp(3, [36, 51, 35]))

    def keys(node, prefix=""):
        for k, v in node.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    assert set(keys(plan.values)) == set(plan.reasons)
    patch = plan.values["data"]["patch_size"]
    assert all(p % 16 == 0 and p <= s for p, s in zip(patch, [36, 51, 35], strict=True))


@pytest.mark.parametrize("dims,shape", [(2, [288, 383]), (3, [36, 51, 35]), (3, [512, 512, 300])])
def test_cpu_plan_keeps_a_step_to_seconds(dims, shape):
    """The newcomer's 3D run took 66 s per step: the CPU plan's estimate stays near 2 s."""
    plan = make_plan(".", "auto", hardware=CPU2, fp=fp(dims, shape))
    v = plan.values
    macs = step_macs(tuple(v["network"]["channels"]), v["data"]["patch_size"],
                     v["train"]["batch_size"])
    assert macs / (2 * 2.0e9) <= 2.0 + 1e-9
    assert plan.estimate_seconds_per_step <= 2.0


def test_gpu_plan_is_larger_than_the_cpu_plan():
    cpu = make_plan(".", "cpu", hardware=CPU2, fp=fp(2, [288, 383]))
    gpu = make_plan(".", "auto", hardware=GPU, fp=fp(2, [288, 383]))
    assert len(gpu.values["network"]["channels"]) > len(cpu.values["network"]["channels"])
    assert gpu.values["data"]["patch_size"][0] > cpu.values["data"]["patch_size"][0]


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'quick'"):
        make_plan(".", "quik", hardware=CPU2, fp=fp(2, [64, 64]))


def test_precedence_plan_config_set(tmp_path):
    data = write_phantom_dataset(tmp_path / "p", n_cases=4, size=32, n_raters=2)
    plan = make_plan(data, "quick", hardware=CPU2)
    assert build_config(None, [], dataset=data, plan=plan).train.batch_size == 4
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"train": {"batch_size": 3, "max_steps": 7}}))
    config = build_config(cfg_file, ["train.max_steps=5"], dataset=data, plan=plan)
    assert config.train.batch_size == 3 and config.train.max_steps == 5  # file, then --set
    assert config.network.channels == tuple(plan.values["network"]["channels"])  # plan kept


def test_train_writes_plan_json_and_a_failed_train_leaves_no_folder(tmp_path):
    from diffuseg.training.start import train_run

    data = write_phantom_dataset(tmp_path / "p", n_cases=4, size=32, n_raters=2)
    plan = make_plan(data, "quick", hardware=CPU2)
    overrides = ["train.max_steps=1", "train.device=cpu", "process.T=20", "train.val_cases=1"]
    run = train_run(build_config(None, overrides, dataset=data, plan=plan), data,
                    tmp_path / "run", progress=False, plan=plan)
    saved = json.loads((run / "plan.json").read_text())
    assert saved["preset"] == "quick" and saved["reasons"]["data.patch_size"]
    bad = build_config(None, overrides + ["method.name=ddpm", "data.patch_size=[48,48]"],
                       dataset=data, plan=plan)
    bad.method.name = "no_such_method"
    with pytest.raises(ConfigError):
        train_run(bad, data, tmp_path / "failed", progress=False, plan=plan)
    assert not (tmp_path / "failed").exists()


def test_cpu_plan_picks_the_measured_method_for_large_multi_rater_2d_data():
    """LIDC-like data (4 raters, thousands of slices) on a CPU with no method named: ldseg with
    the measured widths, the measurement cited; a named method, a GPU, single-rater or small data
    keep the cost-ladder plan and ddpm (the config's default)."""
    lidc = fp(2, [128, 128], n=2256, raters=4)
    plan = make_plan(".", "auto", hardware=CPU2, fp=lidc)
    assert plan.values["method"]["name"] == "ldseg"
    assert plan.values["network"]["channels"] == [32, 64, 128]
    assert plan.values["train"]["val_cases"] == 32
    assert "benchmarks/RESULTS.md" in plan.reasons["method.name"]
    config = build_config(None, [], dataset=None, plan=plan)
    assert (config.method.name, config.network.channels) == ("ldseg", (32, 64, 128))
    assert build_config(None, ["method.name=ddpm"], dataset=None, plan=plan).method.name == "ddpm"
    for other in (make_plan(".", "auto", hardware=CPU2, fp=lidc, method="ddpm"),
                  make_plan(".", "auto", hardware=GPU, fp=lidc),
                  make_plan(".", "auto", hardware=CPU2, fp=fp(2, [128, 128], n=2256)),
                  make_plan(".", "auto", hardware=CPU2, fp=fp(2, [128, 128], n=40, raters=4))):
        assert "method" not in other.values
        assert other.values["network"]["channels"] != [] and "network.channels" in other.reasons


def test_chosen_method_reads_every_place_a_user_names_one(tmp_path):
    from diffuseg.training.start import chosen_method

    assert chosen_method(None, ["train.max_steps=5"]) is None
    assert chosen_method(None, ["method.name=ddpm", "method.name = berdiff"]) == "berdiff"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"method": {"name": "cimd_paper"}}))
    assert chosen_method(cfg, []) == "cimd_paper"
    assert chosen_method(cfg, ["method.name=ddpm"]) == "ddpm"  # --set wins over the file
    cfg.write_text(json.dumps({"train": {"max_steps": 3}}))
    assert chosen_method(cfg, []) is None


def test_minutes_alone_let_the_budget_end_the_run(tmp_path):
    """--minutes with no step count anywhere: the budget rules (max_steps = BIG, no step total in
    the progress line), not the default 2,000 steps; a step count given anywhere is kept."""
    from diffuseg.core.validation import BIG
    from diffuseg.run.log import _Bar
    from diffuseg.training.start import steps_for_minutes

    assert steps_for_minutes(None, ["train.max_minutes=60"]) == [f"train.max_steps={BIG}"]
    assert steps_for_minutes(None, ["train.max_minutes=60", "train.max_steps=10"]) == []
    assert steps_for_minutes(None, ["method.name=ddpm"]) == []
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"max_steps": 300}}))
    assert steps_for_minutes(cfg, ["train.max_minutes=60"]) == []
    for total, shown in ((BIG, None), (2000, 2000)):
        bar = _Bar(total, 0, True, 60.0)
        try:
            assert bar.progress.total == shown
        finally:
            bar.close()  # its heartbeat thread stops with it
