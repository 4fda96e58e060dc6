"""diffuseg.inference.prediction_folder writes and reads the prediction folder: a replaced case
keeps no stale file,
and the lock admits one writer per folder."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.core.atomic import LOCK_NAME
from diffuseg.core.ensemble import summarise
from diffuseg.errors import DataError
from diffuseg.inference.prediction_folder import (
    case_folders,
    load_prediction,
    lock_output,
    write_result,
)


def result(n_samples: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return summarise(torch.rand(n_samples, 1, 1, 8, 8, generator=g))




@pytest.fixture
def geometry(tmp_path):
    from PIL import Image

    from diffuseg.io import read_image

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return read_image(path)[1]


def test_rewrite_replaces_the_whole_case_folder(tmp_path, geometry):
    case = tmp_path / "pred" / "case"
    write_result(result(3), geometry, case, source=tmp_path / "img.png")
    assert len(list(case.glob("sample_*"))) == 3
    second = result(2, seed=1)
    write_result(second, geometry, case, source=tmp_path / "img.png")
    assert sorted(p.name for p in case.glob("sample_*")) == ["sample_00.png", "sample_01.png"]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["case"]  # no temporaries
    pred = load_prediction(case, [0, 1])
    assert pred.samples.shape == (2, 8, 8)
    np.testing.assert_array_equal(pred.consensus, second.consensus[0].numpy())
    assert case_folders(tmp_path / "pred") == ["case"]


def test_reader_takes_the_samples_result_json_lists(tmp_path, geometry):
    case = tmp_path / "case"
    write_result(result(2), geometry, case, source=tmp_path / "img.png")
    (case / "sample_07.png").write_bytes((case / "sample_00.png").read_bytes())  # a stray file
    assert load_prediction(case, [0, 1]).samples.shape[0] == 2
    info = json.loads((case / "result.json").read_text())
    assert [f for f in info["files"] if f.startswith("sample_")] == ["sample_00.png",
                                                                      "sample_01.png"]


def mixed_samples(background: torch.Tensor) -> torch.Tensor:
    """4 samples of 8 x 8: columns 0-3 hold ``background`` (all samples below 0.5), columns 4-7
    vary (pixel (r, c) is foreground in the samples s <= (r + c) % 4: in 1 to 4 of them)."""
    samples = torch.zeros(4, 1, 1, 8, 8)
    samples[..., :4] = background
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(4, 8), indexing="ij")
    for s in range(4):
        samples[s, 0, 0, :, 4:] = torch.where(s <= (rows + cols) % 4, 0.9, 0.1)
    return samples


def test_pixels_where_all_samples_are_0_have_no_uncertainty_in_folder_and_preview(tmp_path,
                                                                                   geometry):
    """Soft values 0.30-0.49 where every sample is background (the failure of the old soft-mean
    maps: probability ~0.4, entropy ~0.97 bits there): the folder's probability is the share of
    samples (0) and every uncertainty map is 0 there; the uncertainty preview is the one of
    samples that are exactly 0 there (it depends on the binarized samples only)."""
    from diffuseg.inference.prediction_folder import read_float_map

    g = torch.Generator().manual_seed(0)
    soft = mixed_samples(0.30 + 0.19 * torch.rand(4, 1, 1, 8, 4, generator=g))
    hard = mixed_samples(torch.zeros(4, 1, 1, 8, 4))
    image = np.zeros((1, 8, 8), np.float32)
    for name, samples in (("soft", soft), ("hard", hard)):
        write_result(summarise(samples), geometry, tmp_path / name, source=tmp_path / "img.png",
                     image=image)
    case = tmp_path / "soft"
    share = (soft[:, 0, 0] > 0.5).double().mean(0).numpy()
    probability = read_float_map(case / "probability.png")
    np.testing.assert_array_equal(probability, np.round(255 * share) / 255)
    assert (probability[:, :4] == 0).all() and (probability[:, 4:] > 0).all()
    for name in ("variance", "entropy", "mutual_information"):
        values = read_float_map(case / f"{name}.png")
        assert (values[:, :4] == 0).all(), name
        assert (values[:, 4:][share[:, 4:] < 1] > 0).all(), name  # where the samples disagree
    def preview(name: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / name / "uncertainty_preview.png"))

    np.testing.assert_array_equal(preview("soft"), preview("hard"))


def test_lock_is_exclusive_reentrant_and_released(tmp_path):
    folder = tmp_path / "out"
    with lock_output(folder):
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
        with lock_output(folder):  # the same process may nest
            pass
        assert (folder / LOCK_NAME).exists()
    assert not (folder / LOCK_NAME).exists()



def test_lock_refuses_a_second_thread_of_the_same_process(tmp_path):
    """Two service threads writing one folder: the second is refused, not let in."""
    import threading

    folder = tmp_path / "out"
    errors: list[str] = []

    def other_thread():
        try:
            with lock_output(folder):
                errors.append("entered")
        except DataError as err:
            errors.append(str(err))

    with lock_output(folder):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=30)
        assert (folder / LOCK_NAME).exists()
    assert len(errors) == 1 and f"in use by pid {os.getpid()} on " in errors[0]
    assert not (folder / LOCK_NAME).exists()
    thread = threading.Thread(target=other_thread)  # released: now it may enter
    thread.start()
    thread.join(timeout=30)
    assert errors[-1] == "entered"

def hold_in_child(folder):
    """A child process holding ``folder``'s lock until killed."""
    import subprocess
    import sys

    code = ("import sys, time; from diffuseg.core.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_of_a_live_process_refuses_and_a_killed_one_frees(tmp_path):
    folder = tmp_path / "out"
    child = hold_in_child(folder)
    try:
        with pytest.raises(DataError, match=f"in use by pid {child.pid} on ") as err:
            with lock_output(folder):
                pass
        assert "\n" not in str(err.value)
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {child.pid} ")  # left alone
    finally:
        child.kill()  # SIGKILL: no cleanup runs, the file stays, the kernel drops the lock
        child.wait()
        child.stdout.close()  # the pipe, not left to the GC (a ResourceWarning)
    assert (folder / LOCK_NAME).exists()
    with lock_output(folder):
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    assert not (folder / LOCK_NAME).exists()


def test_a_waiter_never_holds_a_removed_lock_file(tmp_path, monkeypatch):
    """A process that opened the file just before its holder removed it retries on a new one."""
    import diffuseg.core.atomic as atomic

    folder = tmp_path / "out"
    folder.mkdir()
    real_open, opened = os.open, []

    def open_then_lose_race(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:  # the first time: the file is removed (by a finishing holder) at once
            opened.append(path)
            os.unlink(path)
        return fd

    monkeypatch.setattr(atomic.os, "open", open_then_lose_race)
    with lock_output(folder):
        assert len(opened) == 1
        assert (folder / LOCK_NAME).exists()  # held on the file that is there
    assert not (folder / LOCK_NAME).exists()
