"""One listing of a dataset folder gives both fingerprints (the run's and the preprocessed
folder's): the same hashes as the earlier per-file implementations, every added, removed or
rewritten case detected, and a training start lists the folder once."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from diffuseg.data import Dataset
from diffuseg.data import files as dataset_files
from diffuseg.data.files import scan
from diffuseg.data.phantom import write_phantom_dataset
from diffuseg.data.preprocess import (
    STREAM_THRESHOLD_BYTES,
    default_folder,
    fingerprint,
    is_current,
    preprocess,
    training_bytes,
)
from diffuseg.data.streaming import should_stream
from diffuseg.run.folder import dataset_fingerprint
from diffuseg.training.loop import train
from diffuseg.training.start import build_config


def reference_files_sha256(root: Path) -> tuple[str, int]:
    """The run fingerprint as it was computed before data/files.py (pathlib, file by file)."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.relative_to(root).parts[0] != "preprocessed")
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return h.hexdigest(), len(files)


def reference_preprocess_sha256(root: Path) -> str:
    """The preprocessed folder's fingerprint as it was computed before data/files.py."""
    h = hashlib.sha256()
    files = [root / "dataset.json"] + sorted(
        p for sub in ("imagesTr", "labelsTr") if (root / sub).is_dir()
        for p in (root / sub).iterdir() if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@pytest.fixture
def data(tmp_path):
    return write_phantom_dataset(tmp_path / "ph", 4, size=16, n_raters=2, seed=3)


def hashes(root: Path) -> tuple[str, str]:
    files = scan(root)
    return files.files_sha256, files.preprocess_sha256


def test_one_scan_gives_the_earlier_hashes(data):
    # files the two fingerprints treat differently: nested, hidden, derived, names that sort
    # differently as strings and as paths ("a.b" < "a/b" as strings, after it as paths)
    (data / "notes" / "a").mkdir(parents=True)
    (data / "notes" / "a" / "b.txt").write_text("x")
    (data / "notes" / "a.b").write_text("yy")
    (data / "labelsTr" / ".hidden").write_text("zzz")
    (data / "preprocessed" / "abc").mkdir(parents=True)
    (data / "preprocessed" / "abc" / "index.json").write_text("{}")
    (data / "imagesTr" / "sub").mkdir()  # a folder inside imagesTr: not a preprocess input
    (data / "imagesTr" / "sub" / "x.png").write_bytes(b"1")
    os.symlink(data / "notes", data / "linked")  # a linked folder outside the case folders
    files = scan(data)
    assert (files.files_sha256, files.n_files) == reference_files_sha256(data)
    assert files.preprocess_sha256 == reference_preprocess_sha256(data)
    assert fingerprint(data) == reference_preprocess_sha256(data)
    recorded = dataset_fingerprint(Dataset.open(data))
    assert recorded["files_sha256"] == reference_files_sha256(data)[0]
    assert recorded["n_files"] == reference_files_sha256(data)[1]


def test_every_change_to_a_case_changes_the_fingerprints(data):
    before = hashes(data)
    label = data / "labelsTr" / "phantom_0001_r0.png"
    stamp = label.stat()
    os.utime(label, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # rewritten, same size
    rewritten = hashes(data)
    assert rewritten[1] != before[1]  # the preprocessed folder is made again
    assert rewritten[0] == before[0]  # the run's: names and sizes only (a copied dataset resumes)
    image = data / "imagesTr" / "phantom_0002_0000.png"
    image.write_bytes(image.read_bytes() + b"\0")  # rewritten with another size
    resized = hashes(data)
    assert resized[0] != rewritten[0] and resized[1] != rewritten[1]
    for name in ("imagesTr/phantom_0009_0000.png", "labelsTr/phantom_0009_r0.png",
                 "labelsTr/phantom_0009_r1.png"):  # a case added
        (data / name).write_bytes((data / name.replace("0009", "0000")).read_bytes())
    added = hashes(data)
    assert added[0] != resized[0] and added[1] != resized[1]
    for path in (data / "imagesTr").glob("phantom_0003_*"):  # a case removed
        path.unlink()
    removed = hashes(data)
    assert removed[0] != added[0] and removed[1] != added[1]
    assert len({before, rewritten, resized, added, removed}) == 5


def test_a_preprocessed_folder_is_current_only_for_its_files(data):
    config = build_config(None, [], dataset=data)
    files = scan(data)
    folder = preprocess(data, config, progress=False, files=files)
    assert folder == default_folder(data, config)
    assert json.loads((folder / "index.json").read_text())["fingerprint"] == \
        files.preprocess_sha256
    assert is_current(folder, data, config) and is_current(folder, data, config, files)
    (data / "imagesTr" / "phantom_0000_0000.png").unlink()
    assert not is_current(folder, data, config)
    assert is_current(folder, data, config, files)  # the listing given is what is compared


def test_a_training_start_lists_the_dataset_once(data, tmp_path, monkeypatch):
    """Preprocessing on demand and the run's fingerprint share one listing; so do the resume
    check and the preprocessed folder's check of a resumed run."""
    scans: list[Path] = []
    real = dataset_files.scan

    def spy(root):
        scans.append(Path(root))
        return real(root)

    monkeypatch.setattr(dataset_files, "scan", spy)
    config = build_config(None, [
        "data.stream=true", "data.num_workers=0", "network.channels=[8,16]",
        "network.attention_levels=[false,false]", "network.norm_groups=4", "train.batch_size=2",
        "train.max_steps=1", "train.device=cpu", "process.T=10", "train.val_cases=1",
        "train.val_samples=1", "train.val_steps=1"], dataset=data)
    run = train(config, data, tmp_path / "run", progress=False)
    assert scans == [data]
    assert "training data: streaming" in (run / "training_log.txt").read_text()
    recorded = json.loads((run / "fingerprint.json").read_text())
    assert recorded["files_sha256"] == reference_files_sha256(data)[0]
    scans.clear()
    config.train.max_steps = 2
    train(config, data, run, resume=True, progress=False)
    assert scans == [data]
    assert "resumed at step 1" in (run / "training_log.txt").read_text()


def test_the_memory_estimate_stops_once_it_decides(data):
    dataset = Dataset.open(data)
    ids = [c.case_id for c in dataset.cases]
    full = training_bytes(dataset, ids)
    per_case = full // len(ids)  # phantom cases share one shape
    assert training_bytes(dataset, ids, stop_above=per_case) == 2 * per_case
    assert training_bytes(dataset, ids, stop_above=full) == full
    config = build_config(None, [], dataset=data)
    assert not should_stream(dataset, ids, config) and full < STREAM_THRESHOLD_BYTES


def test_the_train_command_opens_and_lists_the_dataset_once(data, tmp_path, monkeypatch, capsys):
    """Plan, config defaults and training share one ``Dataset.open``; both fingerprints share
    one ``scan``."""
    import sys

    from diffuseg.cli import main

    opened: list[Path] = []
    real_open = Dataset.open.__func__

    def open_spy(cls, root):
        opened.append(Path(root))
        return real_open(cls, root)

    scans: list[Path] = []
    real_scan = dataset_files.scan
    monkeypatch.setattr(Dataset, "open", classmethod(open_spy))
    monkeypatch.setattr(dataset_files, "scan", lambda root: scans.append(root) or real_scan(root))
    monkeypatch.setattr(sys, "argv", [
        "diffuseg", "train", str(data), "-o", str(tmp_path / "run"), "--max-steps", "1",
        "--quiet", "--set", "network.channels=[8,16]", "--set",
        "network.attention_levels=[false,false]", "--set", "network.norm_groups=4",
        "--set", "train.val_cases=1", "--set", "train.val_samples=1", "--set",
        "train.val_steps=1", "--set", "process.T=10", "--set", "train.device=cpu"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert opened == [data] and scans == [data]
    assert (tmp_path / "run" / "model.safetensors").is_file()
