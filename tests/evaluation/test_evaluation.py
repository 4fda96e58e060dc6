"""``diffuseg.evaluation.evaluate``: tiny datasets and prediction folders written with the
project's own
writers, and outcomes computed by hand (or by a plain loop over pairs)."""

from __future__ import annotations

import hashlib
import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from diffuseg.cli.evaluate import evaluate_command
from diffuseg.core.ensemble import summarise
from diffuseg.data import Dataset, DatasetInfo, majority_mask, write_dataset, write_phantom_dataset
from diffuseg.errors import ConfigError, DataError
from diffuseg.evaluation.evaluate import (
    aggregate,
    evaluate,
    pool_curves,
    worst_cases,
)
from diffuseg.inference.prediction_folder import read_float_map, write_result
from diffuseg.io import Geometry, write_probability
from diffuseg.metrics import CONVENTIONS, reliability_curve


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """2D, 3 cases of 32 x 32, 3 raters (nested masks: rater 1 >= rater 0 >= rater 2)."""
    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "phantom", n_cases=3,
                                 spatial_dims=2, size=32, n_raters=3, seed=0)


@pytest.fixture(scope="module")
def phantom_3d_one_rater(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ds3") / "phantom3d", n_cases=2,
                                 spatial_dims=3, size=16, n_raters=1, seed=1)


def write_predictions(dataset_dir: Path, pred_dir: Path, samples_of, extra=None) -> None:
    """``samples_of(case_data) -> [S, K, *spatial]`` probabilities, summarised and written as
    ``diffuseg predict`` does."""
    for case in Dataset.open(dataset_dir).cases:
        data = case.load()
        samples = torch.as_tensor(np.asarray(samples_of(data), dtype=np.float32))[:, None]
        write_result(summarise(samples), data.geometry, pred_dir / case.case_id,
                     source=Path(case.case_id), extra=extra)


def ged_by_loops(samples: np.ndarray, raters: np.ndarray) -> float:
    """2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')], d = 1 - IoU, d(empty, empty) = 0, all pairs."""
    def d(a, b):
        union = np.logical_or(a, b).sum()
        return 0.0 if union == 0 else 1.0 - np.logical_and(a, b).sum() / union

    def mean_d(x, y):
        return np.mean([d(a, b) for a, b in product(x, y)])

    return 2 * mean_d(samples, raters) - mean_d(samples, samples) - mean_d(raters, raters)


def test_majority_as_prediction(phantom, tmp_path):
    """Every sample is the raters' majority: consensus metrics are perfect, GED has a closed form,
    ECE is the mean |majority - rater mean|, and with no error and no variance UEO is 1."""
    write_predictions(phantom, tmp_path / "pred",
                      lambda d: np.repeat(majority_mask(d.raters)[None, None], 4, axis=0))
    summary = evaluate(tmp_path / "pred", phantom, tmp_path / "out", report=False)
    assert summary["n_cases"] == 3
    cases = {c.case_id: c.load() for c in Dataset.open(phantom).cases}
    for entry in summary["per_case"]:
        raters = cases[entry["case"]].raters > 0
        maj = majority_mask(raters).astype(bool)
        assert (entry["dice"], entry["iou"], entry["hd95"], entry["assd"]) == (1.0, 1.0, 0.0, 0.0)
        # 4 samples, (16, 100) requested: reported under their own count, never as GED16/100
        assert entry["ged_4"] == pytest.approx(ged_by_loops(np.stack([maj] * 4), raters))
        assert "ged_16" not in entry and "ged_100" not in entry
        assert entry["samples_used"] == {"ged_4": 4, "hm_iou_4": 4, "ci_4": 4}
        assert entry["ece"] == pytest.approx(np.abs(maj - raters.mean(0)).mean())
        assert entry["uncertainty_error_overlap"] == 1.0
        assert entry["s_ncc"] is None  # identical samples: a constant map, NCC undefined
    assert summary["mean"]["s_ncc"] == {"mean": None, "std": None, "n": 0, "n_nan": 3}
    assert summary["mean"]["dice"] == {"mean": 1.0, "std": 0.0, "n": 3, "n_nan": 0}


def test_samples_equal_to_raters(phantom, tmp_path):
    """Samples = the raters: GED 0, HM-IoU 1, CI 1 (S_c = D_max = D_a = 1)."""
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
    summary = evaluate(tmp_path / "pred", phantom, tmp_path / "out", report=False)
    for entry in summary["per_case"]:
        assert entry["ged_3"] == pytest.approx(0.0, abs=1e-12)
        assert entry["hm_iou_3"] == pytest.approx(1.0)
        assert entry["ci_3"] == pytest.approx(1.0)
        assert entry["samples_used"] == {"ged_3": 3, "hm_iou_3": 3, "ci_3": 3}


def test_single_rater_3d_gives_ged_zero(phantom_3d_one_rater, tmp_path):
    """NIfTI predictions; samples identical to the only rater: GED 0, HM-IoU 1, Dice 1; the CI
    score needs 2 raters, so it is NaN, left out of the mean and counted."""
    write_predictions(phantom_3d_one_rater, tmp_path / "pred",
                      lambda d: np.repeat(d.raters[:, None], 3, axis=0))
    summary = evaluate(tmp_path / "pred", phantom_3d_one_rater, tmp_path / "out", report=False)
    for entry in summary["per_case"]:
        assert entry["ged_3"] == 0.0 and "ged_16" not in entry and "ged_100" not in entry
        assert entry["hm_iou_3"] == 1.0 and entry["dice"] == 1.0
        assert entry["ci_3"] is None
    assert summary["mean"]["ci_3"]["n_nan"] == 2


def test_surface_distances_in_mm(tmp_path):
    """One voxel against one voxel 3 voxels away along axis 0, spacing 2 mm on that axis:
    HD95 = ASSD = 6 mm, Dice 0."""
    geometry = Geometry.from_affine(np.diag([2.0, 1.0, 1.0, 1.0]), (8, 8, 8))
    rater, sample = np.zeros((1, 8, 8, 8), np.uint8), np.zeros((1, 8, 8, 8), np.float32)
    rater[0, 2, 4, 4] = sample[0, 5, 4, 4] = 1
    info = DatasetInfo({"0": "CT"}, {"background": 0, "lesion": 1}, 1, ".nii.gz", 1, 3)
    root = write_dataset(tmp_path / "ds", [("c0", np.zeros((1, 8, 8, 8), np.float32), rater,
                                            geometry)], info)
    write_predictions(root, tmp_path / "pred", lambda d: np.stack([sample, sample]))
    summary = evaluate(tmp_path / "pred", root, tmp_path / "out")
    (entry,) = summary["per_case"]
    assert (entry["hd95"], entry["assd"], entry["dice"]) == (6.0, 6.0, 0.0)
    # NIfTI carries a spacing: the distances are mm, and say so
    assert entry["distance_unit"] == summary["conventions"]["distance_unit"] == "mm"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["conventions"][
        "distance_unit"] == "mm"
    text = (tmp_path / "out" / "report.html").read_text()
    assert "HD95 (mm)" in text and "ASSD (mm)" in text and "(px)" not in text


def test_multi_class_per_label(tmp_path):
    """Labels 0/1/2: a consensus equal to the majority scores 1 per label; one with labels 1
    and 2 swapped scores 0 per label (its foreground is right, its classes wrong)."""
    raters = np.zeros((2, 16, 16), np.uint8)
    raters[:, 2:6, 2:6] = 1
    raters[:, 9:13, 9:13] = 2
    info = DatasetInfo({"0": "MR"}, {"background": 0, "a": 1, "b": 2}, 2, ".png", 2, 2)
    image = np.zeros((1, 16, 16), np.float32)
    root = write_dataset(tmp_path / "ds", [(c, image, raters, Geometry.identity((16, 16)))
                                           for c in ("right", "swapped")], info)
    for case_id, labels in (("right", raters[0]), ("swapped", (3 - raters[0]) % 3)):
        one_hot = (labels[None] == np.arange(3)[:, None, None]).astype(np.float32)
        result = summarise(torch.from_numpy(np.stack([one_hot, one_hot]))[:, None])
        write_result(result, Geometry.identity((16, 16)), tmp_path / "pred" / case_id,
                     source=Path(case_id))
    summary = evaluate(tmp_path / "pred", root, tmp_path / "out", report=False)
    by_case = {c["case"]: c for c in summary["per_case"]}
    assert [by_case["right"][k] for k in ("dice_1", "dice_2", "dice", "ged_2")] == [1, 1, 1, 0]
    assert [by_case["swapped"][k] for k in ("dice_1", "dice_2", "dice")] == [0, 0, 0]
    # d(s, y) = 1 - mean_l IoU_l = 1 across sets, 0 within: GED = 2 * 1 - 0 - 0
    assert by_case["swapped"]["ged_2"] == pytest.approx(2.0)


def test_summary_json_layout_and_config_hash(phantom, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"spatial_dims": 2}\n')
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None],
                      extra={"run": str(run)})
    evaluate(tmp_path / "pred", phantom, tmp_path / "out", n_samples_list=(2, 5), report=False)

    def refuse(constant):
        raise AssertionError(f"summary.json holds {constant}; NaN must be written as null")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    keys = list(summary)
    assert keys.index("mean") < keys.index("per_case")
    assert keys.index("conventions") < keys.index("mean")
    conventions = summary["conventions"]
    assert {k: conventions[k] for k in CONVENTIONS} == json.loads(json.dumps(CONVENTIONS))
    assert conventions["n_samples_requested"] == [2, 5]
    assert conventions["n_samples_available"] == {"min": 3, "max": 3}
    assert summary["config_hash"] == hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    assert {"ged_2", "hm_iou_2", "ci_2"} <= set(summary["mean"])
    assert "ged_5" not in summary["mean"]  # 3 samples: no GED5
    assert conventions["n_samples_reported"] == [2]
    assert [c["case"] for c in summary["per_case"]] == sorted(c["case"] for c in
                                                              summary["per_case"])


def test_16_samples_report_no_ged_100(phantom, tmp_path):
    """16 samples per case, (16, 100) requested (the default): GED16, HM-IoU16 and CI16, and no
    GED100 anywhere (summary.json, report); with 100 samples GED100 appears, and GED16 is the GED
    of the first 16."""
    def cycled(n):  # n samples: the raters over and over
        return lambda d: d.raters[np.arange(n) % len(d.raters)][:, None]

    write_predictions(phantom, tmp_path / "p16", cycled(16))
    summary = evaluate(tmp_path / "p16", phantom, tmp_path / "o16")
    assert {"ged_16", "hm_iou_16", "ci_16"} <= set(summary["mean"])
    for entry in summary["per_case"]:
        assert entry["n_samples"] == 16 and "ged_100" not in entry
    for path in ("summary.json", "report.html"):
        text = (tmp_path / "o16" / path).read_text()
        assert "ged_100" not in text and "GED100" not in text, path
    assert summary["conventions"]["n_samples_reported"] == [16]

    write_predictions(phantom, tmp_path / "p100", cycled(100))
    summary = evaluate(tmp_path / "p100", phantom, tmp_path / "o100", report=False)
    cases = {c.case_id: c.load() for c in Dataset.open(phantom).cases}
    for entry in summary["per_case"]:
        raters = cases[entry["case"]].raters > 0
        samples = raters[np.arange(100) % 3]
        assert entry["ged_16"] == pytest.approx(ged_by_loops(samples[:16], raters))
        assert entry["ged_100"] == pytest.approx(ged_by_loops(samples, raters))
    assert summary["conventions"]["n_samples_reported"] == [16, 100]


def test_png_distances_are_in_pixels(phantom, tmp_path):
    """PNG images carry no spacing: HD95 and ASSD are in pixels, and summary.json and the report
    say "px", never "mm"."""
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
    summary = evaluate(tmp_path / "pred", phantom, tmp_path / "out")
    assert summary["conventions"]["distance_unit"] == "px"
    assert all(c["distance_unit"] == "px" for c in summary["per_case"])
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["conventions"]["distance_unit"] == "px"
    text = (tmp_path / "out" / "report.html").read_text()
    assert "HD95 (px)" in text and "ASSD (px)" in text and "in pixels" in text
    assert "(mm)" not in text and "millimetres" not in text


def test_no_run_gives_null_hash_and_unmatched_folders_are_listed(phantom, tmp_path):
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
    (tmp_path / "pred" / "stray").mkdir()
    summary = evaluate(tmp_path / "pred", phantom, tmp_path / "out", report=False)
    assert summary["config_hash"] is None and summary["run"] is None
    assert summary["unmatched_predictions"] == ["stray"] and summary["n_cases"] == 3


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_empty_or_unmatched_prediction_folder(phantom, tmp_path):
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "pred", phantom, tmp_path / "out")
    assert "holds no case folders" in one_line(err)
    (tmp_path / "pred" / "nope").mkdir()
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "pred", phantom, tmp_path / "out")
    assert "nope" in one_line(err) and "phantom_0000" in one_line(err)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "missing", phantom, tmp_path / "out")
    assert "missing" in one_line(err)
    assert not (tmp_path / "out").exists()


def test_case_folder_missing_a_file(phantom, tmp_path):
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
    (tmp_path / "pred" / "phantom_0001" / "probability.png").unlink()
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "pred", phantom, tmp_path / "out")
    assert "phantom_0001/probability.png" in one_line(err)


def test_case_folder_with_a_sample_or_map_of_another_shape(phantom, tmp_path):
    """One sample (or the variance map) of another shape than the case's consensus: one line
    naming that file and both shapes (it ended in numpy's 'all input arrays must have the same
    shape' traceback)."""
    from PIL import Image

    for name in ("sample_01.png", "variance.png"):
        write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
        Image.fromarray(np.zeros((7, 32), np.uint8)).save(tmp_path / "pred" / "phantom_0001" / name)
        with pytest.raises(DataError) as err:
            evaluate(tmp_path / "pred", phantom, tmp_path / "out")
        message = one_line(err)
        assert f"phantom_0001/{name}" in message and "(7, 32)" in message, message
        assert "(32, 32)" in message and "re-run 'diffuseg predict'" in message, message
        assert not (tmp_path / "out").exists()


def test_bad_sample_counts(phantom, tmp_path):
    with pytest.raises(ConfigError):
        evaluate(tmp_path, phantom, tmp_path / "out", n_samples_list=(0,))


def test_png_probability_scale_is_inverted(tmp_path):
    values = np.array([[0, 51, 153], [200, 254, 255]], np.float32) / 255
    write_probability(tmp_path / "p.png", values, Geometry.identity((2, 3)))
    write_probability(tmp_path / "p.nii.gz", values, Geometry.identity((2, 3), "nifti"))
    np.testing.assert_allclose(read_float_map(tmp_path / "p.png"), values, atol=1e-7)
    np.testing.assert_array_equal(read_float_map(tmp_path / "p.nii.gz"), values)


def test_pooled_curve_equals_the_curve_of_all_pixels():
    rng = np.random.default_rng(0)
    p = [rng.random((5, 7)), rng.random((4, 4)) ** 3]
    t = [rng.random((5, 7)), rng.random((4, 4))]
    pooled = pool_curves([reliability_curve(a, b, 10) for a, b in zip(p, t, strict=True)])
    whole = reliability_curve(np.concatenate([a.ravel() for a in p]),
                              np.concatenate([b.ravel() for b in t]), 10)
    assert pooled["counts"] == whole["counts"]
    for key in ("mean_predicted", "mean_observed"):
        got = [math.nan if v is None else v for v in pooled[key]]
        np.testing.assert_allclose(got, whole[key])


def test_aggregate_leaves_out_and_counts_nan():
    per_case = [{"case": "a", "x": 1.0}, {"case": "b", "x": math.nan}, {"case": "c", "x": 3.0},
                {"case": "d", "x": None}]
    assert aggregate(per_case) == {"x": {"mean": 2.0, "std": 1.0, "n": 2, "n_nan": 2}}


def test_worst_cases_put_missing_dice_last():
    per_case = [{"case": "a", "dice": 0.9}, {"case": "b", "dice": None},
                {"case": "c", "dice": 0.1}]
    assert [c["case"] for c in worst_cases(per_case, 3)] == ["c", "a", "b"]


def test_cli_command(phantom, tmp_path):
    write_predictions(phantom, tmp_path / "pred", lambda d: d.raters[:, None])
    app = typer.Typer()
    app.command()(evaluate_command)
    result = CliRunner().invoke(app, [str(tmp_path / "pred"), "-d", str(phantom), "-n", "2",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    assert "3 cases" in result.output
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert "ged_2" in summary["mean"] and not (tmp_path / "pred" / "report.html").exists()
