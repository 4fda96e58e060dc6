"""A 2D run on volumes, slice by slice (nnU-Net's 2d configuration): outputs in the input's
geometry, each slice as it would be alone with its own seed, a DICOM series to a SEG."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_synth import rotation, write_series
from tiny_runs import tiny_run
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.core.ensemble import to_labels
from diffuseg.errors import ConfigError, DataError
from diffuseg.inference.marks import Constraints
from diffuseg.inference.predictor import Predictor
from diffuseg.inference.slices import raster_trained, slice_seed
from diffuseg.io import read_image, read_mask
from diffuseg.io.dicom_seg import read_seg, reference_for
from diffuseg.sampling.memory import SUMMARY_COPIES, sampling_bytes, slices_bytes


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run2d"), 2)  # trained on PNGs: [C, rows, columns]


def oblique_volume(path, shape=(20, 18, 5), seed=0):
    affine = np.eye(4)
    affine[:3, :3] = rotation(20.0, 10.0) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    volume = np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return volume, affine


def alone(predictor, image_2d, seed, n_samples=2):
    """Slice labels [S, rows, columns] of a 2D image [rows, columns] segmented on its own."""
    result = predictor.segment(image_2d[None], n_samples=n_samples, steps=1, seed=seed)
    return result.sample_labels()[:, 0].numpy()


def test_slice_seed_is_fixed_distinct_and_in_range():
    seeds = [slice_seed(7, k) for k in range(100)]
    assert seeds == [slice_seed(7, k) for k in range(100)]
    assert len(set(seeds)) == 100 and len({slice_seed(8, k) for k in range(100)} & set(seeds)) == 0
    assert all(0 <= s < 2**63 for s in seeds)
    assert slice_seed(0, 0) == int(np.random.SeedSequence([0, 0]).generate_state(1, np.uint64)[0]
                                   ) >> 1


def test_nifti_volume_keeps_its_geometry_and_each_slice_is_its_own_2d_image(tmp_path, run2d):
    """Outputs on the input's grid (shape, affine); sample s at slice k equals segmenting slice k
    alone, as the run's PNG training images were stored ([rows, columns] = (j, i)), with seed
    slice_seed(seed, k)."""
    volume, affine = oblique_volume(tmp_path / "vol.nii.gz")
    predictor = Predictor.from_run(run2d)
    assert raster_trained(run2d)
    slices_done = []
    folder = predictor.predict_file(tmp_path / "vol.nii.gz", tmp_path / "out", n_samples=2,
                                    steps=1, seed=5,
                                    on_slice=lambda k, n: slices_done.append((k, n)))
    assert slices_done == [(k, 5) for k in range(1, 6)]
    for name in ("consensus.nii.gz", "sample_01.nii.gz", "entropy.nii.gz", "probability.nii.gz"):
        out = nib.load(folder / name)
        assert out.shape == volume.shape
        np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    samples = np.stack([read_mask(folder / f"sample_{s:02d}.nii.gz")[0] for s in range(2)])
    for k in range(volume.shape[2]):
        expected = alone(predictor, volume[:, :, k].T, slice_seed(5, k))  # [S, j, i]
        np.testing.assert_array_equal(samples[..., k], expected.transpose(0, 2, 1))
    record = json.loads((folder / "result.json").read_text())
    assert record["shape"] == list(volume.shape) and record["seed"] == 5
    assert record["slice_by_slice"]["slices"] == 5
    assert record["slice_by_slice"]["in_plane"].startswith("rows, columns")


def test_a_slice_does_not_depend_on_the_others(tmp_path, run2d):
    """Slice 2 gives the same soft samples whatever the other slices hold; identical slices at
    other positions draw other samples (their own seeds)."""
    predictor = Predictor.from_run(run2d)
    rng = np.random.default_rng(1)
    base = rng.normal(100, 20, size=(1, 16, 12, 5)).astype(np.float32)
    other = rng.normal(50, 30, size=base.shape).astype(np.float32)
    other[..., 2] = base[..., 2]
    a = predictor.segment(base, n_samples=3, steps=1, seed=11).samples
    b = predictor.segment(other, n_samples=3, steps=1, seed=11).samples
    assert torch.equal(a[..., 2], b[..., 2])
    assert not torch.equal(a[..., 1], b[..., 1])
    same = np.repeat(base[..., :1], 3, axis=-1)  # one slice three times
    soft = predictor.segment(same, n_samples=3, steps=1, seed=11).samples
    assert not torch.equal(soft[..., 0], soft[..., 1])
    assert torch.equal(soft[..., 0], a[..., 0])  # slice 0 of both: same image, same seed


def test_marks_on_a_volume_hold_in_every_slice(run2d):
    predictor = Predictor.from_run(run2d)
    volume = np.random.default_rng(2).normal(100, 20, size=(1, 16, 12, 3)).astype(np.float32)
    inside = np.zeros(volume.shape[1:], bool)
    outside = np.zeros(volume.shape[1:], bool)
    inside[2:5, 7:10, 1] = True  # not symmetric in (i, j): a transpose slip would show
    outside[10:14, 1:3, 2] = True
    result = predictor.segment(volume, n_samples=2, steps=1, constraints=Constraints(inside,
                                                                                     outside))
    labels = to_labels(result.samples, class_dim=2)[:, 0].numpy()
    assert (labels[:, inside] == 1).all() and (labels[:, outside] == 0).all()


def test_a_volume_with_other_channels_or_too_big_is_refused_in_one_line(tmp_path, run2d,
                                                                       monkeypatch):
    predictor = Predictor.from_run(run2d)
    two = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(DataError, match=r"with 1 channel\(s\) slice by slice, got shape "
                                        r"\(2, 8, 8, 3\)"):
        predictor.segment(two, n_samples=2, steps=1)
    assert not predictor.takes(two) and predictor.takes(two[:1])
    monkeypatch.setenv("DIFFUSEG_MAX_WORK_BYTES", str(2**20))
    big = np.zeros((1, 64, 64, 40), np.float32)
    with pytest.raises(ConfigError, match=r"samples of a 163840-voxel image need about .*"
                                          r"DIFFUSEG_MAX_WORK_BYTES") as err:
        predictor.segment(big, n_samples=4, steps=1)
    assert "\n" not in str(err.value)


def test_slices_bytes_adds_the_stacked_volume_to_one_slice_pass():
    # one 10 x 10 slice pass of 3 samples, plus 3 samples x 2 classes x 500 voxels x 4 bytes
    # x SUMMARY_COPIES for the 5-slice volume
    assert slices_bytes(3, 100, 5, 8, channels=2, classes=2) == \
        sampling_bytes(3, 100, 8, channels=2) + 3 * 2 * 500 * 4 * SUMMARY_COPIES


def test_dicom_series_through_predict_gives_a_seg_on_the_source_series(tmp_path, run2d):
    """A series read as [columns, rows, slices]: slice k is handed to the PNG-trained run as
    pydicom's pixel array of the file at slice k ([rows, columns]), and the SEG of the consensus
    lies on the source series."""
    series, _ = write_series(tmp_path / "series", rows=20, columns=24, slices=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(run2d), "-i", str(series), "-o", str(out),
                                      "--samples", "2", "--steps", "1", "--seed", "3", "-q"])
    assert result.exit_code == 0, result.output
    case = next(p for p in out.iterdir() if p.is_dir())
    image, geometry = read_image(series)
    consensus, written = read_mask(case / "consensus.nii.gz")
    assert consensus.shape == image.shape[1:] == (24, 20, 4)
    np.testing.assert_allclose(written.affine, geometry.affine, atol=1e-4)
    reference = reference_for(geometry)
    seg = pydicom.dcmread(case / "dicom" / "seg_consensus.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference[0].SeriesInstanceUID
    np.testing.assert_array_equal(read_seg(case / "dicom" / "seg_consensus.dcm", reference)[1],
                                  consensus == 1)
    predictor = Predictor.from_run(run2d)
    samples = np.stack([read_mask(case / f"sample_{s:02d}.nii.gz")[0] for s in range(2)])
    for k, ds in enumerate(reference):  # the reader's slice order
        pixels = pydicom.dcmread(ds.filename).pixel_array.astype(np.float32)  # [rows, columns]
        expected = alone(predictor, pixels, slice_seed(3, k))
        np.testing.assert_array_equal(samples[..., k], expected.transpose(0, 2, 1))
