"""Every results file in bench/ records what produced it (issue 32): the fernas version, the git
commit and whether the tree was dirty, the SynthFER revisions, torch, the device, the CPU/GPU
model, the thread count, the date and every flag. Checked for each committed ``bench/results-*``
file (JSON documents, each JSONL line, each CSV row), and for what a bench writes now."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import PROVENANCE_COLUMNS, PROVENANCE_FIELDS, provenance, provenance_columns  # noqa: E402

from nas.runtime.checkpoint import read_csv_rows  # noqa: E402

RESULTS = sorted([*(ROOT / "bench").glob("results-*"),
                  *(p for p in (ROOT / "bench" / "grids").glob("*/*") if p.suffix in (".csv", ".jsonl")
                    or p.name == "summary.json")])


def _check(prov: dict, where: str) -> None:
    missing = [k for k in PROVENANCE_FIELDS if k not in prov]
    assert not missing, f"{where}: provenance lacks {missing}"
    assert len(str(prov["git_commit"])) == 40 or prov["git_commit"] == "unknown", where
    assert prov["torch"] and prov["device"] and prov["cpu_model"] and int(prov["threads"]) >= 1, where
    assert isinstance(prov["flags"], dict) and isinstance(prov["synthfer_revisions"], dict), where


@pytest.mark.parametrize("path", RESULTS, ids=[str(p.relative_to(ROOT / "bench")) for p in RESULTS])
def test_committed_results_record_their_provenance(path):
    if path.suffix == ".json":
        _check(json.loads(path.read_text())["provenance"], path.name)
    elif path.suffix == ".jsonl":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert lines, path.name
        for k, line in enumerate(lines):
            _check(json.loads(line)["provenance"], f"{path.name} line {k + 1}")
    elif path.suffix == ".csv":
        rows = read_csv_rows(path)
        assert rows, path.name
        for k, r in enumerate(rows):
            cells = {c: r.get(c) for c in PROVENANCE_COLUMNS}
            empty = [c for c, v in cells.items() if v in (None, "") and c != "gpu_model"]  # no GPU: empty
            assert not empty, f"{path.name} row {k + 2}: empty {empty}"
            _check({**cells, "flags": json.loads(cells["flags"]),
                    "synthfer_revisions": json.loads(cells["synthfer_revisions"])}, f"{path.name} row {k + 2}")
    else:
        pytest.fail(f"{path.name}: results files are .json, .jsonl or .csv")


def test_provenance_of_this_checkout():
    prov = provenance({"n": 3, "device": "cpu"})
    _check(prov, "provenance()")
    assert prov["flags"] == {"n": 3, "device": "cpu"} and prov["gpu_model"] is None
    assert prov["synthfer_revisions"]["v2"].startswith("v2r")
    cols = provenance_columns(prov)
    assert json.loads(cols["flags"]) == {"n": 3, "device": "cpu"} and cols["gpu_model"] == ""


def test_a_bench_writes_its_provenance(tmp_path):
    import render  # bench/render.py

    args = render.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "r.jsonl")])
    render.main(args)
    render.main(args)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 2  # .jsonl appends
    doc = json.loads(lines[0])
    _check(doc["provenance"], "render --out")
    assert doc["provenance"]["flags"]["quick"] is True
