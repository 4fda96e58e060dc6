"""benchmarks/first_hour.py: its measurements of one command and its table."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("first_hour", ROOT / "benchmarks" /
                                                  "first_hour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seconds_per_step_and_table(tmp_path):
    bench = load()
    rows = [{"step": 20, "loss": 1.0, "seconds": 10.0}, {"step": 20, "val_dice": 0.5},
            {"step": 40, "loss": 0.9, "seconds": 30.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert bench.seconds_per_step(tmp_path) == 1.0
    row = {"dataset": "ph2", "minutes": 2.0, "seconds_per_step": 1.0, "first_checkpoint_s": 50.2,
           "train": {"seconds": 126.0}, "overrun_s": 6.0, "predict_s_per_case": 3.5,
           "peak_rss_mb": 900, "longest_silence_s": 12.0}
    text = bench.table([row], "1.0-2.0")
    assert "| ph2 | 2 min | 1.0 | 50 | 126.0 | 6.0 (+5 %) | 3.5 | 900 | 12.0 |" in text


def test_run_records_output_silence_and_rss(tmp_path):
    bench = load()
    result = bench.run(["check", "-h"], tmp_path / "log.txt")
    assert result["rc"] == 0 and result["peak_rss_mb"] >= 0
    assert result["longest_silence_s"] <= result["seconds"]
    assert "check" in (tmp_path / "log.txt").read_text()
