"""Importers turn real data sets, in the layouts users download, into valid dataset folders with
the right cases, raters, groups, splits, values and geometry."""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import shared_data
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app as cli_app
from diffuseg.data import Dataset, load_splits
from diffuseg.data.importers import import_dicom, import_folder, import_lidc_slices, import_msd
from diffuseg.data.importers.folder import find_images, find_mask
from diffuseg.data.importers.lidc import inventory
from diffuseg.errors import DataError
from diffuseg.io import read_image, read_mask


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# LIDC-IDRI slices


def lidc_tree(root: Path, patients=("P1", "P2"), slices: int = 2) -> dict[str, np.ndarray]:
    """A miniature release: nodule-0 of each patient, ``slices`` 6x5 slices, 4 raters where
    rater r marks the first r + 1 rows (0/255). Returns the image of every case id."""
    images = {}
    for p, patient in enumerate(patients):
        for i in range(slices):
            image = np.arange(30).reshape(6, 5) + 40 * p + 7 * i
            png(root / patient / "nodule-0" / "images" / f"slice-{i}.png", image)
            for r in range(4):
                mask = np.zeros((6, 5))
                mask[: r + 1] = 255
                png(root / patient / "nodule-0" / f"mask-{r}" / f"slice-{i}.png", mask)
            images[f"{patient}_n0_s{i}"] = image
    return images


def test_lidc_from_folder_and_from_compressed_tar_agree(tmp_path):
    images = lidc_tree(tmp_path / "release" / "LIDC-IDRI-slices")
    (tmp_path / "release" / "split.json").write_text(json.dumps({"train": ["P1"], "val": ["P2"]}))
    with tarfile.open(tmp_path / "release.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "release" / "LIDC-IDRI-slices", arcname="LIDC-IDRI-slices")
    from_folder = import_lidc_slices(tmp_path / "release", tmp_path / "a")
    from_tar = import_lidc_slices(tmp_path / "release.tar.gz", tmp_path / "b",
                                  split=tmp_path / "release" / "split.json")
    assert from_folder.n_cases == from_tar.n_cases == 4 and from_tar.n_groups == 2
    for root in (tmp_path / "a", tmp_path / "b"):
        dataset = Dataset.open(root)
        assert dataset.info.raters == 4 and dataset.info.labels == {"background": 0, "nodule": 1}
        assert {c.case_id: c.group for c in dataset.cases} == {
            "P1_n0_s0": "P1", "P1_n0_s1": "P1", "P2_n0_s0": "P2", "P2_n0_s1": "P2"}
        assert load_splits(root) == {"train": ["P1_n0_s0", "P1_n0_s1"],
                                     "val": ["P2_n0_s0", "P2_n0_s1"], "test": []}
        data = dataset.case("P2_n0_s1").load()
        np.testing.assert_array_equal(data.image[0], images["P2_n0_s1"])
        for r in range(4):  # rater r marked rows 0..r, stored 0/255, read as 0/1
            np.testing.assert_array_equal(data.raters[r].sum(1), [5] * (r + 1) + [0] * (5 - r))


def test_lidc_limit_and_errors(tmp_path):
    lidc_tree(tmp_path / "src", patients=("P1", "P2", "P3"))
    summary = import_lidc_slices(tmp_path / "src", tmp_path / "two", limit_patients=2)
    assert summary.n_cases == 4 and summary.split_sizes is None  # no split.json: by patient
    assert {c.group for c in Dataset.open(tmp_path / "two").cases} == {"P1", "P2"}
    (tmp_path / "src" / "P2" / "nodule-0" / "mask-3" / "slice-1.png").unlink()
    with pytest.raises(DataError, match=r"lacks \['mask-3'\] of slice 1 of P2 nodule-0"):
        import_lidc_slices(tmp_path / "src", tmp_path / "broken")
    png(tmp_path / "src" / "P2" / "nodule-0" / "mask-3" / "slice-1.png", np.full((6, 5), 17))
    with pytest.raises(DataError, match=r"mask-3/slice-1\.png.*\[17\]"):
        import_lidc_slices(tmp_path / "src", tmp_path / "broken", overwrite=True)
    with pytest.raises(DataError, match="not a readable tar"):
        import_lidc_slices(tmp_path / "src" / "P1" / "nodule-0" / "images" / "slice-0.png",
                           tmp_path / "x")


def tar_of(path: Path, files: dict[str, bytes]) -> Path:
    """An uncompressed tar (PAX: names of any length) of ``files`` (member name -> bytes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def slice_files(patient: str, image: bytes, mask: bytes, slice_: str = "0") -> dict[str, bytes]:
    files = {f"{patient}/nodule-0/images/slice-{slice_}.png": image}
    files.update({f"{patient}/nodule-0/mask-{r}/slice-{slice_}.png": mask for r in range(4)})
    return files


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_lidc_tar_with_a_250_character_patient_folder(tmp_path):
    """A folder name too long for a file name (case files are '<patient>_n<k>_s<i>_0000.png')
    is shortened with a hash (it ended in an ENAMETOOLONG traceback); the group keeps it."""
    image = np.arange(30).reshape(6, 5)
    mask = np.zeros((6, 5))
    mask[:2] = 255
    long = "P" * 250
    tar = tar_of(tmp_path / "long.tar", {**slice_files(long, png_bytes(image), png_bytes(mask)),
                                         **slice_files("P2", png_bytes(image), png_bytes(mask))})
    summary = import_lidc_slices(tar, tmp_path / "ds")
    assert summary.n_cases == 2 and summary.n_groups == 2
    cases = {c.case_id: c for c in Dataset.open(tmp_path / "ds").cases}
    (short,) = [c for c in cases if c != "P2_n0_s0"]
    assert short.startswith("P" * 90) and short.endswith("_n0_s0") and len(short) < 130
    assert cases[short].group == long  # splits still keep a patient's slices together
    data = cases[short].load()
    np.testing.assert_array_equal(data.image[0], image)
    np.testing.assert_array_equal(data.raters[3].sum(1), [5, 5, 0, 0, 0, 0])
    digits = slice_files("P3", png_bytes(image), png_bytes(mask), slice_="9" * 5000)
    tar = tar_of(tmp_path / "digits.tar", {**digits, **slice_files("P4", png_bytes(image),
                                                                    png_bytes(mask))})
    assert import_lidc_slices(tar, tmp_path / "ds2").n_cases == 1  # not a slice of the release


def test_lidc_tar_member_declaring_8_gib(tmp_path):
    """A member whose header declares 8 GiB (its data cut short) is refused from the header,
    before any byte is read, naming the member and the budget."""
    image, mask = png_bytes(np.ones((6, 5))), png_bytes(np.zeros((6, 5)))
    tar = tar_of(tmp_path / "ok.tar", slice_files("P1", image, mask))
    raw = tar.read_bytes().rstrip(b"\0")
    raw += b"\0" * (-len(raw) % 512)
    huge = tarfile.TarInfo("P1/nodule-0/images/slice-1.png")
    huge.size = 8 * 2**30
    (tmp_path / "huge.tar").write_bytes(raw + huge.tobuf(tarfile.PAX_FORMAT)
                                        + image.ljust(512, b"\0") + b"\0" * 1024)
    with pytest.raises(DataError) as err:
        import_lidc_slices(tmp_path / "huge.tar", tmp_path / "ds")
    message = str(err.value)
    assert "\n" not in message and "huge.tar" in message and "slice-1.png" in message
    assert "8 GiB" in message and "DIFFUSEG_MAX_IMAGE_BYTES" in message, message


def test_lidc_slice_png_with_missing_rows(tmp_path):
    """A slice whose PNG header declares more rows than its data holds is refused (PIL fills
    the missing rows with zeros)."""
    full = png_bytes(np.arange(30).reshape(6, 5))
    short = png_bytes(np.arange(30).reshape(6, 5)[:3])
    short = short[:20] + (6).to_bytes(4, "big") + short[24:]  # IHDR height 3 -> 6 ...
    ihdr = short[12:29]
    short = short[:29] + zlib.crc32(ihdr).to_bytes(4, "big") + short[33:]  # ... and its CRC
    assert Image.open(io.BytesIO(short)).size == (5, 6)
    tar = tar_of(tmp_path / "cut.tar", slice_files("P1", short, png_bytes(np.zeros((6, 5)))))
    with pytest.raises(DataError, match=r"images/slice-0\.png.*3 of its 6 rows"):
        import_lidc_slices(tar, tmp_path / "ds")
    tar = tar_of(tmp_path / "whole.tar", slice_files("P1", full, png_bytes(np.zeros((6, 5)))))
    assert import_lidc_slices(tar, tmp_path / "ds2").n_cases == 1


@pytest.fixture(scope="module")
def lidc_tar() -> Path:
    return shared_data("lidc_idri_slices") / "trainval.tar"


@pytest.mark.shared_data
def test_lidc_release_counts_from_member_names(lidc_tar):
    found = inventory(lidc_tar)
    patients = {key.patient for key in found}
    assert len(patients) == 703
    assert len({(key.patient, key.nodule) for key in found}) == 2124
    assert len(found) == 12492
    assert all(kinds == {"images", "mask-0", "mask-1", "mask-2", "mask-3"}
               for kinds in found.values())
    split = json.loads((lidc_tar.parent / "split.json").read_text())
    assert (len(split["train"]), len(split["val"])) == (606, 97)
    assert set(split["train"]) | set(split["val"]) == patients


@pytest.mark.shared_data
def test_lidc_release_import_of_two_patients(lidc_tar, tmp_path):
    summary = import_lidc_slices(lidc_tar, tmp_path / "lidc", limit_patients=2)
    dataset = Dataset.open(tmp_path / "lidc")
    with tarfile.open(lidc_tar) as archive:  # the first two patients, read independently
        members: dict[str, tarfile.TarInfo] = {}
        for member in archive:
            if len({name.split("/")[1] for name in [*members, member.name]}) > 2:
                break
            members[member.name] = member
        names = list(members)
        first = next(n for n in names if n.endswith("/images/slice-3.png"))

        def pixels(name: str) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(archive.extractfile(members[name]).read())))

        image, rater_2 = pixels(first), pixels(first.replace("/images/", "/mask-2/"))
    n_slices = sum(n.split("/")[3] == "images" for n in names)
    assert summary.n_cases == len(dataset) == n_slices and summary.n_groups == 2
    _, patient, nodule, _, _ = first.split("/")
    data = dataset.case(f"{patient}_n{nodule.split('-')[1]}_s3").load()
    assert data.image.shape == (1, 128, 128) and data.raters.shape == (4, 128, 128)
    np.testing.assert_array_equal(data.image[0], image)
    np.testing.assert_array_equal(data.raters[2], rater_2 // 255)
    folds = json.loads((lidc_tar.parent / "split.json").read_text())
    splits = load_splits(tmp_path / "lidc")
    for fold in ("train", "val"):
        assert all(dataset.case(c).group in folds[fold] for c in splits[fold])
    assert sum(map(len, splits.values())) == n_slices


# ---------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon


def test_msd_4d_images_are_split_per_channel(tmp_path):
    src = tmp_path / "Task99"
    affine = np.array([[0, 0, 2.0, -5], [0, -1.5, 0, 3], [1.2, 0, 0, 7], [0, 0, 0, 1]])
    volume = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    label = (np.arange(24).reshape(4, 3, 2) % 3).astype(np.uint8)
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(volume, affine), src / "imagesTr" / "brain_001.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), src / "labelsTr" / "brain_001.nii.gz")
    (src / "imagesTr" / "._brain_001.nii.gz").write_bytes(b"macOS resource fork")
    (src / "dataset.json").write_text(json.dumps({
        "name": "Brain", "licence": "CC", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "oedema", "2": "tumour"}, "numTraining": 1,
        "training": [{"image": "./imagesTr/brain_001.nii.gz",
                      "label": "./labelsTr/brain_001.nii.gz"}]}))
    import_msd(src, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "FLAIR", "1": "T1w"} and info["licence"] == "CC"
    assert info["labels"] == {"background": 0, "oedema": 1, "tumour": 2}
    for c in range(2):
        written = nib.load(tmp_path / "out" / "imagesTr" / f"brain_001_{c:04d}.nii.gz")
        np.testing.assert_array_equal(written.get_fdata(), volume[..., c])
        np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    mask = nib.load(tmp_path / "out" / "labelsTr" / "brain_001.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), label)


@pytest.mark.shared_data
def test_msd_hippocampus_all_cases(tmp_path):
    src = shared_data("msd_hippocampus")
    summary = import_msd(src, tmp_path / "hippo")
    dataset = Dataset.open(tmp_path / "hippo")
    assert summary.n_cases == len(dataset) == 207 and dataset.info.spatial_dims == 3
    assert dataset.info.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    for case_id in ("hippocampus_001", "hippocampus_394"):
        data = dataset.case(case_id).load()
        source = nib.load(src / "imagesTr" / f"{case_id}.nii.gz")
        label = nib.load(src / "labelsTr" / f"{case_id}.nii.gz")
        written = nib.load(tmp_path / "hippo" / "imagesTr" / f"{case_id}_0000.nii.gz")
        np.testing.assert_array_equal(written.affine, source.affine)
        assert written.header["sform_code"] == source.header["sform_code"]
        np.testing.assert_array_equal(data.image[0], source.get_fdata(dtype=np.float32))
        np.testing.assert_array_equal(data.raters[0], np.asanyarray(label.dataobj))
        assert set(np.unique(data.raters).tolist()) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# generic folders: CHASE_DB1, PH2


@pytest.mark.shared_data
def test_chase_db1_two_observers(tmp_path):
    src = shared_data("chase_db1")
    suffixes = ("_1stHO", "_2ndHO")
    images = find_images(src, "*.jpg", suffixes)
    assert len(images) == 28
    assert all(find_mask(p, src, s, None, None).name == f"{p.stem}{s}.png"
               for p in images for s in suffixes)
    summary = import_folder(src, tmp_path / "chase", image_glob="Image_01*.jpg",
                            mask_suffixes=suffixes, group_pattern=r"Image_\d+")
    dataset = Dataset.open(tmp_path / "chase")
    assert summary.n_cases == 2 and summary.n_groups == 1
    assert dataset.info.channel_names == {"0": "R", "1": "G", "2": "B"}
    data = dataset.case("Image_01R").load()
    np.testing.assert_array_equal(data.image, read_image(src / "Image_01R.jpg")[0])
    np.testing.assert_array_equal(data.raters[1], read_mask(src / "Image_01R_2ndHO.png")[0])
    assert {c.group for c in dataset.cases} == {"Image_01"}


@pytest.mark.shared_data
def test_ph2_lesions_in_grey(tmp_path):
    src = shared_data("ph2")
    images = find_images(src, "*/*.png", ["_lesion"])
    assert len(images) == 167 and all(p.parent.name == p.stem for p in images)
    import_folder(src, tmp_path / "ph2", image_glob="IMD00*/*.png", mask_suffixes=["_lesion"],
                  grayscale=True)
    dataset = Dataset.open(tmp_path / "ph2")
    assert dataset.info.raters == 1 and dataset.info.n_channels == 1
    case = dataset.cases[0]
    data = case.load()
    rgb = read_image(src / case.case_id / f"{case.case_id}.png")[0].astype(np.int64)
    # the reference in integers: 299 R + 587 G + 114 B = 1000 L + remainder, ties to even. Exact
    # equality is right: the importer's arithmetic is exact too (folder.luma), on every CPU; a
    # float32 reference differed by 1 on 2 tie pixels, by SIMD path
    n = 299 * rgb[0] + 587 * rgb[1] + 114 * rgb[2]
    whole, rest = np.divmod(n, 1000)
    expected = whole + (rest > 500) + ((rest == 500) & (whole % 2 == 1))
    assert (rest == 500).sum() == 20  # the ties this case holds are checked too
    np.testing.assert_array_equal(data.image[0], expected)
    lesion = read_mask(src / case.case_id / f"{case.case_id}_lesion.png")[0]
    np.testing.assert_array_equal(data.raters[0], lesion)
    assert 0 < lesion.mean() < 1


def test_grey_conversion_is_exact_at_ties(tmp_path):
    """L = round((299 R + 587 G + 114 B) / 1000), ties to even, whatever the CPU: pixels from
    PH2 whose luma is exactly k + 0.5 (a float32 dot product rounded them either way)."""
    rgb = np.array([[[212, 156, 110], [108, 62, 51]], [[0, 0, 0], [255, 255, 255]],
                    [[1, 1, 1], [10, 20, 30]]], np.uint8)  # [rows, cols, RGB]
    # 167.5 -> 168, 74.5 -> 74 (even), 0, 255, 1, (2990 + 11740 + 3420) / 1000 = 18.15 -> 18
    src = tmp_path / "src"
    png(src / "a.png", rgb)
    png(src / "a_mask.png", np.zeros((3, 2)))
    import_folder(src, tmp_path / "out", grayscale=True)
    image = Dataset.open(tmp_path / "out").case("a").load().image
    np.testing.assert_array_equal(image, [[[168, 74], [0, 255], [1, 18]]])


def test_folder_options_and_errors(tmp_path):
    src = tmp_path / "src"
    png(src / "images" / "a.png", np.full((4, 3), 9))
    png(src / "images" / "b.png", np.full((4, 3), 5))
    png(src / "masks" / "a.png", np.eye(4, 3) * 255)
    png(src / "masks" / "b.png", np.zeros((4, 3)))
    import_folder(src / "images", tmp_path / "out", mask_suffixes=[""], mask_dir=src / "masks")
    data = Dataset.open(tmp_path / "out").case("a").load()
    np.testing.assert_array_equal(data.raters[0], np.eye(4, 3))
    png(src / "masks" / "b.png", np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"b\.png.*\(3, 3\).*\(4, 3\)"):
        import_folder(src / "images", tmp_path / "out", mask_suffixes=[""],
                      mask_dir=src / "masks", overwrite=True)
    with pytest.raises(DataError, match=r"no mask 'a_seg\.png'"):
        import_folder(src / "images", tmp_path / "o2", mask_suffixes=["_seg"])
    with pytest.raises(DataError, match="--group-pattern 'x' does not match case 'a'"):
        import_folder(src / "images", tmp_path / "o3", mask_suffixes=[""],
                      mask_dir=src / "masks", group_pattern="x")


# ---------------------------------------------------------------------------------------------
# DICOM


@pytest.mark.shared_data
def test_dicom_study_with_tumour_mask(tmp_path):
    src = shared_data("dicom_brain_tumor_progression")
    summary = import_dicom(src, tmp_path / "dcm", image="T1post", masks=["MaskTumor"],
                           channels=["FLAIRreg"])
    dataset = Dataset.open(tmp_path / "dcm")
    assert summary.n_cases == 1 and dataset.info.channel_names == {"0": "T1post", "1": "FLAIRreg"}
    case = dataset.case("PGBM-001")
    assert case.group == "PGBM-001"  # the PatientID tag
    data = case.load()
    t1, geometry = read_image(src / "PGBM-001" / "11-T1post-03326")
    assert data.image.shape == (2, 260, 320, 25) and data.raters.shape == (1, 260, 320, 25)
    np.testing.assert_array_equal(data.image[0], t1[0])
    np.testing.assert_allclose(data.geometry.spacing, (0.6875, 0.6875, 6.5), atol=1e-5)
    np.testing.assert_allclose(data.geometry.affine, geometry.affine, atol=1e-4)
    mask = read_mask(src / "PGBM-001" / "5364-MaskTumor-94345", labels=(0, 1))[0]
    np.testing.assert_array_equal(data.raters[0], mask)
    assert mask.any()
    with pytest.raises(DataError, match="0 series folders matching --mask 'Rater2'"):
        import_dicom(src, tmp_path / "x", image="T1post", masks=["Rater2"])


# ---------------------------------------------------------------------------------------------
# command line


def test_convert_commands_have_help_and_overwrite(tmp_path):
    runner = CliRunner()
    for kind in ("lidc-slices", "msd", "folder", "dicom"):
        result = runner.invoke(cli_app, ["convert", kind, "-h"])
        assert result.exit_code == 0 and "--overwrite" in result.output, result.output
    lidc_tree(tmp_path / "src", patients=("P1",))
    args = ["convert", "lidc-slices", str(tmp_path / "src"), str(tmp_path / "out"), "--raters", "4"]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0 and "2 cases in 1 groups" in result.output, result.output
    again = runner.invoke(cli_app, args)
    assert isinstance(again.exception, DataError) and "--overwrite" in str(again.exception)
    assert runner.invoke(cli_app, [*args, "--overwrite"]).exit_code == 0
