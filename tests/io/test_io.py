"""Readers and writers keep values and geometry; bad files raise one-line DataErrors."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_synth import mr_slice
from PIL import Image

from diffuseg.errors import DataError
from diffuseg.io import (
    Geometry,
    read_image,
    read_mask,
    write_image,
    write_mask,
    write_preview_png,
    write_probability,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def oblique_affine() -> np.ndarray:
    """A rotation about a tilted axis with anisotropic spacing (0.7, 1.3, 3.0) mm."""
    q, _ = np.linalg.qr(np.array([[0.9, -0.3, 0.1], [0.3, 0.95, 0.05], [-0.1, 0.0, 0.99]]))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag([0.7, 1.3, 3.0])
    affine[:3, 3] = [-10.5, 20.25, 33.3]
    return affine


def save_nifti(path: Path, data: np.ndarray, qform_code: int = 1, sform_code: int = 2) -> Path:
    image = nib.Nifti1Image(data, oblique_affine())
    image.set_qform(oblique_affine(), code=qform_code)
    image.set_sform(oblique_affine(), code=sform_code)
    nib.save(image, path)
    return path


# ---------------------------------------------------------------------------------------------
# raster files


def test_png_grey_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    for high, name in ((255, "a.png"), (65535, "b.png")):
        array = rng.integers(0, high + 1, size=(1, 9, 13)).astype(np.float32)
        write_image(tmp_path / name, array, Geometry.identity((9, 13)))
        back, geometry = read_image(tmp_path / name)
        assert back.dtype == np.float32 and back.shape == (1, 9, 13)
        np.testing.assert_array_equal(back, array)
        assert geometry.kind == "png" and geometry.spacing == (1.0, 1.0)
        np.testing.assert_array_equal(geometry.affine, np.eye(4))


def test_rgb_is_three_channels_and_alpha_is_dropped(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, size=(5, 7, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image, _ = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image, np.moveaxis(rgba[..., :3], -1, 0))
    write_image(tmp_path / "rgb.png", image, Geometry.identity((5, 7)))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png")[0], image)


def test_tiff_keeps_float_values(tmp_path):
    array = np.random.default_rng(2).normal(size=(1, 6, 4)).astype(np.float32)
    write_image(tmp_path / "f.tif", array, Geometry.identity((6, 4)))
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0], array)


def test_png_mask_values(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    write_mask(tmp_path / "m.png", labels, Geometry.identity((2, 3)))
    assert np.asarray(Image.open(tmp_path / "m.png")).max() == 2  # stored as labels, not 0/255
    mask, _ = read_mask(tmp_path / "m.png", labels=(0, 1, 2))
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels)

    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "v.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "v.png")[0], [[0, 1], [1, 0]])

    grey = np.array([[0, 1], [1, 1]], np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png")[0], grey)


def test_png_mask_with_other_values_is_refused(tmp_path):
    path = tmp_path / "odd.png"
    Image.fromarray(np.array([[0, 17], [255, 0]], np.uint8)).save(path)
    with pytest.raises(DataError, match=r"odd\.png.*\[0, 17, 255\]"):
        read_mask(path)
    with pytest.raises(DataError, match=r"odd\.png"):
        read_mask(path, labels=(0, 1, 2))
    np.testing.assert_array_equal(read_mask(path, labels=(0, 17, 255))[0], [[0, 17], [255, 0]])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (1, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="differing channels"):
        read_mask(tmp_path / "colour.png")


def test_probability_and_preview(tmp_path):
    p = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    geometry = Geometry.identity((2, 2))
    write_probability(tmp_path / "p.png", p, geometry)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")),
                                  [[0, 64], [128, 255]])  # round(255 p), half to even
    write_probability(tmp_path / "p.nii.gz", p, geometry)
    np.testing.assert_array_equal(nib.load(tmp_path / "p.nii.gz").get_fdata(), p)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        write_probability(tmp_path / "q.png", p * 2, geometry)
    write_preview_png(tmp_path / "preview.png", np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "preview.png")),
                                  [[0, 255], [255, 0]])


# ---------------------------------------------------------------------------------------------
# NIfTI


def test_nifti_round_trip_keeps_oblique_affine_and_codes(tmp_path):
    data = np.random.default_rng(3).normal(size=(5, 6, 7)).astype(np.float32)
    source = save_nifti(tmp_path / "in.nii.gz", data)
    image, geometry = read_image(source)
    assert image.shape == (1, 5, 6, 7) and geometry.kind == "nifti"
    np.testing.assert_allclose(geometry.spacing, (0.7, 1.3, 3.0), rtol=1e-6)
    write_image(tmp_path / "out.nii.gz", image, geometry)
    write_mask(tmp_path / "mask.nii.gz", (image[0] > 0).astype(np.int64), geometry)
    before = nib.load(source)
    for name in ("out.nii.gz", "mask.nii.gz"):
        after = nib.load(tmp_path / name)
        np.testing.assert_array_equal(after.affine, before.affine)
        np.testing.assert_array_equal(after.header.get_qform(), before.header.get_qform())
        assert int(after.header["qform_code"]) == 1 and int(after.header["sform_code"]) == 2
    np.testing.assert_array_equal(nib.load(tmp_path / "out.nii.gz").get_fdata(), data)
    mask, mask_geometry = read_mask(tmp_path / "mask.nii.gz")
    assert nib.load(tmp_path / "mask.nii.gz").get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask, data > 0)
    assert mask_geometry.same_grid(geometry, atol=0.0)


def test_nifti_scaled_source_is_not_scaled_twice(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(raw, np.eye(4))
    image.header.set_slope_inter(2.0, -5.0)
    nib.save(image, tmp_path / "scaled.nii")
    array, geometry = read_image(tmp_path / "scaled.nii")
    np.testing.assert_array_equal(array[0], raw * 2.0 - 5.0)
    write_image(tmp_path / "copy.nii", array, geometry)
    np.testing.assert_array_equal(read_image(tmp_path / "copy.nii")[0], array)


def test_nifti_4d_channels_and_2d(tmp_path):
    data = np.random.default_rng(4).normal(size=(4, 5, 3, 2)).astype(np.float32)
    image, geometry = read_image(save_nifti(tmp_path / "four.nii.gz", data))
    assert image.shape == (2, 4, 5, 3) and geometry.shape == (4, 5, 3)
    np.testing.assert_array_equal(image[1], data[..., 1])
    write_image(tmp_path / "four_out.nii.gz", image, geometry)
    np.testing.assert_array_equal(nib.load(tmp_path / "four_out.nii.gz").get_fdata(), data)

    flat = np.random.default_rng(5).normal(size=(6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(flat, np.diag([0.5, 0.25, 1.0, 1.0])), tmp_path / "flat.nii.gz")
    image, geometry = read_image(tmp_path / "flat.nii.gz")
    assert image.shape == (1, 6, 7) and geometry.spacing == (0.5, 0.25)


def test_png_geometry_written_as_nifti_gets_scanner_codes(tmp_path):
    write_mask(tmp_path / "m.nii.gz", np.ones((3, 4), np.int64), Geometry.identity((3, 4)))
    header = nib.load(tmp_path / "m.nii.gz").header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    np.testing.assert_array_equal(nib.load(tmp_path / "m.nii.gz").affine, np.eye(4))


# ---------------------------------------------------------------------------------------------
# errors


def test_bad_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png.*does not exist"):
        read_image(tmp_path / "missing.png")
    data = np.random.default_rng(6).normal(size=(24, 24, 24)).astype(np.float32)
    raw = (save_nifti(tmp_path / "full.nii.gz", data)).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"cut\.nii\.gz.*truncated"):
        read_image(tmp_path / "cut.nii.gz")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png.*not a readable image"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "fake.nii.gz").write_bytes(gzip.compress(b"hello" * 100))
    with pytest.raises(DataError, match=r"fake\.nii\.gz"):
        read_mask(tmp_path / "fake.nii.gz")
    (tmp_path / "table.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"table\.csv.*unknown file type"):
        read_image(tmp_path / "table.csv")


def test_writers_refuse_lossy_or_mismatched_output(tmp_path):
    geometry = Geometry.identity((2, 2))
    with pytest.raises(DataError, match="non-integer"):
        write_image(tmp_path / "x.png", np.full((1, 2, 2), 0.5), geometry)
    with pytest.raises(DataError, match="JPEG"):
        write_mask(tmp_path / "x.jpg", np.zeros((2, 2)), geometry)
    with pytest.raises(DataError, match="spatial shape"):
        write_mask(tmp_path / "x.png", np.zeros((3, 2)), geometry)
    with pytest.raises(DataError, match="0..255"):
        write_mask(tmp_path / "x.tif", np.full((2, 2), 300), geometry)


# ---------------------------------------------------------------------------------------------
# DICOM


def write_slice(path: Path, pixels: np.ndarray, position, orientation, spacing, series: str,
                number: int) -> None:
    mr_slice(path, pixels, position, orientation, spacing, series, InstanceNumber=number,
             RescaleSlope=2, RescaleIntercept=-100)


ROW, COLUMN = np.array([0.8, 0.6, 0.0]), np.array([0.0, 0.0, -1.0])  # normal r x c = (-.6, .8, 0)


def make_series(folder: Path, series: str = "1.2.3.4", n: int = 4) -> np.ndarray:
    """Slices k = 0..n-1 at (10, 20, 30) + 2 k n_hat, PixelSpacing (0.5, 0.25), written in a
    shuffled order; returns the stored pixels [k, row, column]."""
    folder.mkdir(exist_ok=True)
    pixels = np.arange(n * 3 * 5).reshape(n, 3, 5) + 7
    normal = np.cross(ROW, COLUMN)
    for k in [k for k in (2, 0, 3, 1) if k < n]:
        position = np.array([10.0, 20.0, 30.0]) + 2.0 * k * normal
        write_slice(folder / f"{series}_{(k * 7) % 5}.dcm", pixels[k], position,
                    [*ROW, *COLUMN], (0.5, 0.25), series, number=n - k)
    return pixels


def test_dicom_series_affine_matches_hand_computation(tmp_path):
    pixels = make_series(tmp_path / "series")
    image, geometry = read_image(tmp_path / "series")
    # LPS columns: r * 0.25, c * 0.5, n * 2, origin (10, 20, 30); RAS negates the x and y rows.
    expected = np.array([[-0.2, 0.0, 1.2, -10.0],
                         [-0.15, 0.0, -1.6, -20.0],
                         [0.0, -0.5, 0.0, 30.0],
                         [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(geometry.affine, expected, atol=1e-12)
    np.testing.assert_allclose(geometry.spacing, (0.25, 0.5, 2.0))
    assert geometry.kind == "dicom" and geometry.shape == (5, 3, 4)
    # voxel (i, j, k) = (column, row, slice), rescaled by slope 2 and intercept -100
    np.testing.assert_array_equal(image[0], pixels.transpose(2, 1, 0) * 2.0 - 100.0)
    assert geometry.extras["series_uid"] == "1.2.3.4"


def test_dicom_mixed_series_is_refused_unless_one_is_picked(tmp_path):
    make_series(tmp_path / "mixed", "1.2.3.4")
    make_series(tmp_path / "mixed", "1.2.3.5", n=2)
    with pytest.raises(DataError, match=r"mixes 2 DICOM series.*1\.2\.3\.4.*1\.2\.3\.5"):
        read_image(tmp_path / "mixed")
    image, geometry = read_image(tmp_path / "mixed", series_uid="1.2.3.5")
    assert image.shape == (1, 5, 3, 2) and geometry.extras["series_uid"] == "1.2.3.5"
    with pytest.raises(DataError, match="9.9"):
        read_image(tmp_path / "mixed", series_uid="9.9")


# ---------------------------------------------------------------------------------------------
# real data (skipped when ../shared/data is absent)


@pytest.mark.shared_data
def test_msd_hippocampus_nifti_keeps_affine(tmp_path):
    folder = DATA / "msd_hippocampus"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    source = folder / "labelsTr" / "hippocampus_001.nii.gz"
    mask, geometry = read_mask(source, labels=(0, 1, 2))
    image, image_geometry = read_image(folder / "imagesTr" / "hippocampus_001.nii.gz")
    assert image.shape[1:] == mask.shape and set(np.unique(mask)) == {0, 1, 2}
    assert geometry.same_grid(image_geometry, atol=0.0)
    write_mask(tmp_path / "copy.nii.gz", mask, geometry)
    original, copy = nib.load(source), nib.load(tmp_path / "copy.nii.gz")
    np.testing.assert_array_equal(copy.affine, original.affine)
    np.testing.assert_array_equal(np.asanyarray(copy.dataobj), np.asanyarray(original.dataobj))
    for code in ("qform_code", "sform_code"):
        assert copy.header[code] == original.header[code]


@pytest.mark.shared_data
def test_dicom_tumor_mask_shares_the_t1post_grid():
    folder = DATA / "dicom_brain_tumor_progression" / "PGBM-001"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    import SimpleITK as sitk

    t1 = folder / "11-T1post-03326"
    image, geometry = read_image(t1)
    mask, mask_geometry = read_mask(folder / "5364-MaskTumor-94345", labels=(0, 1))
    header = pydicom.dcmread(next(t1.glob("*.dcm")), stop_before_pixels=True)
    assert image.shape == (1, header.Columns, header.Rows, 25) and mask.shape == geometry.shape
    row_spacing, column_spacing = header.PixelSpacing  # i runs along columns, j along rows
    expected = (column_spacing, row_spacing, header.SpacingBetweenSlices)
    np.testing.assert_allclose(geometry.spacing, expected, atol=1e-3)
    assert mask_geometry.same_grid(geometry) and mask.any()
    # independent reference: SimpleITK's series reader (LPS), converted to RAS
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(t1)))
    volume = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(volume.GetDirection()).reshape(3, 3) * np.array(volume.GetSpacing())
    lps[:3, 3] = volume.GetOrigin()
    np.testing.assert_allclose(geometry.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    np.testing.assert_array_equal(image[0], sitk.GetArrayFromImage(volume).transpose(2, 1, 0))


@pytest.mark.shared_data
def test_chase_db1_rgb_image_and_binary_masks():
    folder = DATA / "chase_db1"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    image, geometry = read_image(folder / "Image_01L.jpg")
    assert image.shape == (3, 960, 999) and geometry.shape == (960, 999)
    first, _ = read_mask(folder / "Image_01L_1stHO.png")
    second, _ = read_mask(folder / "Image_01L_2ndHO.png")
    assert first.shape == geometry.shape and set(np.unique(first)) == {0, 1}
    assert 0 < (first != second).mean() < 0.1  # two observers, mostly agreeing
