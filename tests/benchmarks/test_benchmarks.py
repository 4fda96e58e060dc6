"""benchmarks/lidc.py, ambiguity.py, methods.py and latency.py: argument parsing, dataset
helpers, the LIDC patient split, the reference row, the table; --quick modes end to end (slow)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import load_benchmark
from PIL import Image

from diffuseg.data import Dataset
from diffuseg.errors import DataError

common = load_benchmark("common")
lidc = load_benchmark("lidc")
ambiguity = load_benchmark("ambiguity")


def test_lidc_arguments_presets():
    cpu = lidc.parse_args([])
    assert (cpu.method, cpu.minutes, cpu.preset, cpu.device) == ("ddpm", 20.0, "cpu", "cpu")
    assert (cpu.train_patients, cpu.max_val_cases, cpu.n_samples) == (150, 100, (16, 100))
    gpu = lidc.parse_args(["--gpu", "--method", "cimd_paper", "--n-samples", "16,50"])
    assert (gpu.preset, gpu.device, gpu.method) == ("gpu", "cuda", "cimd_paper")
    assert (gpu.train_patients, gpu.max_val_cases, gpu.n_samples) == (None, None, (16, 50))
    assert "train.device=cuda" in common.PRESETS["gpu"]
    assert lidc.parse_args(["--quick"]).minutes == 0.25
    with pytest.raises(SystemExit):
        lidc.parse_args(["--method", "nope"])
    with pytest.raises(SystemExit):
        lidc.parse_args(["--n-samples", "16,x"])


def test_ambiguity_arguments():
    args = ambiguity.parse_args(["--out", "a.json"])
    assert args.methods == ["ddpm", "cimd_z", "cimd_paper", "unet", "mc_dropout", "ensemble",
                            "prob_unet"]
    assert (args.dataset, args.minutes, args.max_val_cases) == ("both", 10.0, 64)
    assert args.plot == Path("a.png")
    quick = ambiguity.parse_args(["--quick", "--dataset", "lidc", "--methods", "ddpm, unet"])
    assert (quick.dataset, quick.methods, quick.n_samples) == ("phantom", ["ddpm", "unet"], (4, 8))
    assert ambiguity.parse_args(["--train-patients", "0"]).train_patients is None  # 0 = all
    with pytest.raises(SystemExit):
        ambiguity.parse_args(["--methods", "ddpm,berdif"])


def test_every_method_shares_the_preset_widths():
    """Method overrides name the method only: widths and optimiser come from the preset."""
    for overrides in common.METHODS.values():
        assert all(o.startswith("method.") for o in overrides)


def write_release(root: Path) -> Path:
    """A 3-patient release in the LIDC-IDRI slices layout: P1, P2 train, P3 val; 2x2 slices."""
    tar_path = root / "trainval.tar"
    with tarfile.open(tar_path, "w") as archive:
        for p, patient in enumerate(("P1", "P2", "P3")):
            for kind in ["images"] + [f"mask-{r}" for r in range(4)]:
                value = 40 * p if kind == "images" else 255 * (kind == f"mask-{p}")
                buffer = io.BytesIO()
                Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
                info = tarfile.TarInfo(f"LIDC-IDRI-slices/{patient}/nodule-0/{kind}/slice-0.png")
                info.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(info, buffer)
    (root / "split.json").write_text(json.dumps({"train": ["P1", "P2"], "val": ["P3"]}))
    return tar_path


def test_lidc_dataset_keeps_the_release_split(tmp_path):
    src = write_release(tmp_path)
    chosen = common.choose_patients(tmp_path / "split.json", 1, None, seed=0)
    assert len(chosen["train"]) == 1 and chosen["train"][0] in ("P1", "P2")
    assert chosen["val"] == ["P3"]
    root = common.lidc_dataset(tmp_path / "ds", src, train_patients=1)
    splits = json.loads((root / "splits.json").read_text())
    assert splits == {"train": [f"{chosen['train'][0]}_n0_s0"], "val": ["P3_n0_s0"], "test": []}
    assert common.held_out(root, "val", 5) == ["P3_n0_s0"]
    raters = sorted(p.name for p in (root / "labelsTr").iterdir() if p.name.startswith("P3"))
    assert len(raters) == 4  # all four radiologists kept


def test_held_out_is_a_seeded_subset(tmp_path):
    from diffuseg.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "ph", n_cases=40, size=16)
    everything = common.held_out(root, "val", None)
    some = common.held_out(root, "val", 2)
    assert len(some) == 2 and set(some) <= set(everything) and some == sorted(some)
    assert some == common.held_out(root, "val", 2)


def test_reference_row_of_a_single_rater_is_perfect(tmp_path):
    """With one rater, every "sample" is that rater's mask: GED 0, HM-IoU 1, Dice 1, ECE 0."""
    from diffuseg.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "ph", n_cases=4, size=16, n_raters=1)
    cases = [c.case_id for c in Dataset.open(root).cases][:2]
    row = common.run_oracle(root, tmp_path / "oracle", cases, (3, 5))
    assert row["cases"] == 2
    assert row["ged_3"] == pytest.approx(0.0, abs=1e-12)
    assert row["ged_5"] == pytest.approx(0.0, abs=1e-12)
    assert row["hm_iou_3"] == pytest.approx(1.0)
    assert row["dice"] == pytest.approx(1.0)
    assert row["ece"] == pytest.approx(0.0, abs=1e-3)  # probabilities stored as 16-bit PNG


def test_shrink_averages_blocks_and_replicates_the_ragged_edge():
    array = np.arange(15, dtype=np.float32).reshape(1, 3, 5)  # H 3, W 5 -> 2 x 3 at factor 2
    out = common.shrink(array, 2)
    # rows {0,1} and {2,2}; columns {0,1}, {2,3}, {4,4} (the last row/column replicated)
    expect = np.array([[[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]])
    np.testing.assert_allclose(out, expect)


def test_downscale_dataset_keeps_cases_splits_and_binary_masks(tmp_path):
    from diffuseg.data.phantom import write_phantom_dataset

    src = write_phantom_dataset(tmp_path / "ph", n_cases=6, size=32)
    ids = [c.case_id for c in Dataset.open(src).cases]
    (src / "splits.json").write_text(json.dumps(
        {"train": ids[:4], "val": ids[4:5], "test": ids[5:]}))
    dst = common.downscale_dataset(src, tmp_path / "x2", 2)
    big, small = Dataset.open(src), Dataset.open(dst)
    assert [c.case_id for c in small.cases] == [c.case_id for c in big.cases]
    assert json.loads((dst / "splits.json").read_text())["test"] == ids[5:]
    a, b = big.cases[0].load(), small.cases[0].load()
    assert b.image.shape == (a.image.shape[0], 16, 16) and b.raters.shape == (3, 16, 16)
    assert set(np.unique(b.raters)) <= {0, 1}
    # a rater's foreground share survives the area average to within the block rounding
    assert abs((b.raters > 0).mean() - (a.raters > 0).mean()) < 0.05
    marker = (dst / "benchmark.json").stat().st_mtime_ns
    assert common.downscale_dataset(src, dst, 2) == dst  # reused, not rewritten
    assert (dst / "benchmark.json").stat().st_mtime_ns == marker


def test_latency_specs_split_options_from_config_overrides():
    latency = load_benchmark("latency")
    name, overrides = latency.parse_spec("ldseg:width=8,network.channels=[32,64],steps=1")
    assert name == "ldseg"
    assert overrides == ["method.name=ldseg", "method.options.width=8",
                         "network.channels=[32,64]", "method.options.steps=1"]
    assert latency.parse_spec("ddpm") == ("ddpm", ["method.name=ddpm"])


def test_paired_difference_by_hand():
    d = common.paired_difference({"x": 1.0, "y": 3.0, "z": 9.0}, {"x": 2.0, "y": 1.0})
    assert d["cases"] == 2 and d["a_lower"] == 1  # z is not in both
    assert d["mean"] == pytest.approx(0.5)  # (-1 + 2) / 2
    assert -1.0 <= d["ci95"][0] <= 0.5 <= d["ci95"][1] <= 2.0
    constant = common.paired_difference({"a": 0.25, "b": 0.5}, {"a": 0.5, "b": 0.75})
    assert constant["ci95"] == pytest.approx([-0.25, -0.25]) and constant["a_lower"] == 2
    with pytest.raises(DataError, match="no case"):
        common.paired_difference({"a": 1.0}, {"b": 1.0})


def test_latency_quality_is_relative_to_the_most_steps():
    latency = load_benchmark("latency")
    rows = latency.relative_to_most_steps(
        [{"steps": 1, "ged16": 0.42}, {"steps": 10, "ged16": 0.38}, {"steps": 1000, "ged16": 0.4}])
    assert [round(r["ged16_rel"], 9) for r in rows] == [0.05, -0.05, 0.0]


def test_table_layout():
    cols = common.columns((16, 100))
    assert [label for _, label in cols][:4] == ["GED16", "GED100", "HM-IoU16", "CI16"]
    text = common.format_table({"a": {"ged_16": 0.25, "steps": 12}, "b": {"error": "boom"}},
                               [("ged_16", "GED16"), ("steps", "steps"), ("dice", "Dice")])
    assert text.splitlines() == ["method  GED16  steps  Dice", "     a  0.250     12     -",
                                 "b: failed: boom"]
    published = lidc.table({"ged_16": 0.5}, "ddpm", (16,)).splitlines()
    assert published[0].split() == ["method", "GED16", "HM-IoU16", "CI16", "Dice", "s/img",
                                     "steps"]
    assert published[1].split()[:4] == ["ddpm", "(this", "run)", "0.500"]
    assert published[2].split()[:4] == ["MoSE", "(published)", "0.213", "0.622"]
    assert published[3].split()[:4] == ["CIMD", "(published)", "0.321", "0.542"]


@pytest.mark.slow
def test_quick_modes_run_end_to_end(tmp_path):
    out = tmp_path / "amb.json"
    result = ambiguity.main(["--quick", "--threads", "1", "--minutes", "0.05",
                             "--work", str(tmp_path / "a"), "--out", str(out)])
    rows = result["results"]["phantom"]
    assert list(rows) == [common.ORACLE, *common.METHODS]
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        assert row["ged_4"] >= -1e-9 and 0.0 <= row["hm_iou_4"] <= 1.0
    assert json.loads(out.read_text())["results"]["phantom"].keys() == rows.keys()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = lidc.main(["--quick", "--threads", "1", "--minutes", "0.05",
                        "--work", str(tmp_path / "l"), "--out", str(tmp_path / "l.json")])
    assert "error" not in single["result"] and single["result"]["steps"] >= 1


def test_scored_cases_are_checked_against_the_run_splits(tmp_path):
    from diffuseg.errors import DataError

    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": []}))
    common.check_held_out(run, ["c"])
    with pytest.raises(DataError, match="training split"):
        common.check_held_out(run, ["c", "b"])
