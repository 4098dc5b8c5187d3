"""bench/sgas_warmup.py: the first epoch whose entropy fell measurably, and a one-epoch run whose
figures are the search's own metrics.csv (resumable: a second call searches nothing)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sgas_warmup  # noqa: E402

from nas.runtime.checkpoint import read_csv_rows  # noqa: E402
from nas.runtime.errors import FerNasError  # noqa: E402


def test_first_measurable_epoch():
    assert sgas_warmup.first_measurable([1.0, 0.995, 0.99, 0.95]) == 3          # 0.01 below uniform
    assert sgas_warmup.first_measurable([1.0, 0.995], drop=0.005) == 2
    assert sgas_warmup.first_measurable([1.0, 0.999]) is None


def test_quick_run_reads_the_search_metrics_and_resumes(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "w.json"
    argv = ["--quick", "--epochs", "1", "--arch_lrs", "0.01", "--runs", str(runs), "--out", str(out)]
    doc = sgas_warmup.main(sgas_warmup.get_args_parser().parse_args(argv))
    (run,) = doc["runs"]
    rows = read_csv_rows(runs / "lr0.01-s0" / "metrics.csv")
    assert run["alpha_entropy"] == [float(rows[0]["alpha_entropy"])] and 0.9 < run["alpha_entropy"][0] < 1.0
    assert run["supernet_acc"] == [round(float(rows[0]["valid_acc"]), 2)]
    assert json.loads(out.read_text())["provenance"]["flags"]["arch_lrs"] == [0.01]
    mtime = (runs / "lr0.01-s0" / "metrics.csv").stat().st_mtime_ns
    assert sgas_warmup.main(sgas_warmup.get_args_parser().parse_args(argv))["runs"][0]["alpha_entropy"] \
        == run["alpha_entropy"]
    assert (runs / "lr0.01-s0" / "metrics.csv").stat().st_mtime_ns == mtime   # read back, not searched again
    with pytest.raises(FerNasError, match="--arch_lrs"):
        sgas_warmup.main(sgas_warmup.get_args_parser().parse_args([*argv, "--arch_lrs", "0"]))
