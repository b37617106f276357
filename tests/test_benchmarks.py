"""The benchmark scripts end to end on a tiny untrained checkpoint: they run, and write what they say they write."""

import csv
import subprocess
import sys
from pathlib import Path

from .test_remote_code import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_depth_sweep_writes_one_row_per_hop_and_forced_loop_count(tmp_path):
    save_checkpoint(tmp_path / "model")
    command = [sys.executable, str(ROOT / "benchmarks" / "depth_sweep.py"), "--model", str(tmp_path / "model"),
               "--hops", "1", "3", "--loops", "1", "2", "4", "--n", "8", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "out" / "depth_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    # r < hops cannot hold the answer yet and is skipped: (1,1) (1,2) (1,4) (3,4).
    assert [(int(r["hops"]), int(r["loops"])) for r in rows] == [(1, 1), (1, 2), (1, 4), (3, 4)]
    assert all(0.0 <= float(r["answer_accuracy"]) <= 1.0 and float(r["answer_loss"]) > 0 for r in rows)
    assert (tmp_path / "out" / "depth_sweep.png").stat().st_size > 0
