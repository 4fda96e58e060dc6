"""benchmarks/lidc_grid.py: the cells, their states and commands, and one real cell end to end
(train with the CLI, score with lidc_budget.py) on the phantom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

grid = load_benchmark("lidc_grid")
common = load_benchmark("common")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return common.phantom_dataset(tmp_path_factory.mktemp("grid") / "data", n_cases=20, size=16)


def test_states_and_commands(phantom, tmp_path, capsys):
    root = tmp_path / "g"
    args = grid.parse_args(["--dataset", str(phantom), "--root", str(root),
                            "--methods", "ldseg", "cimd_paper", "unet", "--minutes", "30",
                            "--set", "train.lr=0.001"])
    cells = {m: grid.Cell(m, 30.0, root) for m in ("ldseg", "cimd_paper", "unet")}
    assert all(c.state() == "new" for c in cells.values())
    cells["unet"].run.mkdir(parents=True)
    (cells["unet"].run / "config.json").write_text("{}")  # stopped before its end
    assert cells["unet"].state() == "resume"
    (cells["ldseg"].scores.parent).mkdir(parents=True)
    cells["ldseg"].scores.write_text("{}")
    assert cells["ldseg"].state() == "scored"
    train, score = grid.commands(cells["cimd_paper"], args)
    assert train[train.index("-o") + 1] == str(root / "runs" / "m30_cimd_paper")
    assert train[train.index("--method") + 1] == "cimd"
    sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
    assert "method.options.condition_on_z=false" in sets and "train.budget_clock=cpu" in sets
    assert sets[-1] == "train.lr=0.001" and "--resume" not in train  # the user's override last
    assert "--resume" in grid.commands(cells["unet"], args)[0]
    assert score[score.index("--runs") + 1] == str(cells["cimd_paper"].run)
    assert grid.main(["--dataset", str(phantom), "--root", str(root), "--methods", "ldseg",
                      "unet", "--minutes", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "m30_ldseg: scored" in out and "m30_unet: resume" in out
    assert not (root / "grid.log").exists()  # a dry run runs nothing


def test_a_bad_dataset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        grid.parse_args(["--dataset", str(tmp_path), "--root", str(tmp_path / "g")])
    assert "has no dataset.json" in capsys.readouterr().err


def test_one_cell_trains_scores_and_is_then_skipped(phantom, tmp_path):
    root = tmp_path / "g"
    tiny = ["network.channels=[8,16]", "network.attention_levels=[false,false]",
            "network.norm_groups=4", "train.val_cases=1",
            "train.val_samples=2", "train.device=cpu"]
    argv = ["--dataset", str(phantom), "--root", str(root), "--methods", "unet",
            "--minutes", "1", "--max-steps", "3", "--cases", "0",
            *(a for o in tiny for a in ("--set", o))]
    assert grid.main(argv) == 0
    result = json.loads((root / "scores" / "m1_unet.json").read_text())
    assert result["settings"]["method"] == "unet" and result["settings"]["train_steps"] == 3
    assert result["settings"]["budget_clock"] == "cpu"
    log = (root / "grid.log").read_text()
    assert "train m1_unet: exit 0" in log and "score m1_unet: exit 0" in log
    assert grid.main(argv) == 0  # the second call finds the cell scored
    assert (root / "grid.log").read_text().count("train m1_unet: exit 0") == 1
