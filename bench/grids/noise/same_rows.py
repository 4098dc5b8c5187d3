"""Do two commits give the grid the same rows? The grid's recipe at a tiny size (400 faces, 3 + 4
epochs, one seed, 30 % ambiguous noise, every rule), run from two clean checkouts, and every
result column compared (the timings, dates and provenance aside).

    python bench/grids/noise/same_rows.py --old /work/wt/b6d7f52 --new /work/wt/dd113ec \
        --out bench/grids/noise/same-rows.json

Written when the grid moved from b6d7f52 to a later commit mid-grid, so that its rows could be
pooled: the rows of the later cells record the commit they ran at.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from common import emit  # noqa: E402

GRID = ["--arch", "cnn_gap", "--size", "400", "--public_size", "300", "--private_size", "300", "--noise_splits",
        "train+val", "--optimizer", "adam", "--learning_rate", "0.002", "--weight_decay", "0", "--augment", "light",
        "--batch_size", "64", "--base_epochs", "3", "--relabel_epochs", "4", "--seeds", "1", "--workers", "1",
        "--noise", "0.3", "--modes", "ambiguous", "--rules",
        "control,clean,eac,smallloss,confident,confident+eac,confident+smallloss,autofernet,consensus,soft"]
NOT_RESULTS = {"seconds", "git_commit", "git_dirty", "date", "flags", "fernas_version", "threads"}


def rows(checkout: Path, out: Path) -> dict[str, dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "bench/relabel_grid.py", "--out", str(out), *GRID], cwd=checkout, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out / "relabel_grid.csv", newline="") as f:
        return {r["rule"]: r for r in csv.DictReader(f)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="a clean checkout of the grid's first commit")
    p.add_argument("--new", required=True, help="a clean checkout of the commit the grid moves to")
    p.add_argument("--out", default=None, help="also write the comparison here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old, new = rows(Path(args.old), Path(tmp) / "old"), rows(Path(args.new), Path(tmp) / "new")
    commits = {k: next(iter(v.values()))["git_commit"] for k, v in (("old", old), ("new", new))}
    diffs = [{"rule": r, "column": c, "old": old[r][c], "new": new[r].get(c)}
             for r in old for c in old[r] if c not in NOT_RESULTS and old[r][c] != new.get(r, {}).get(c)]
    emit({"bench": "grid_same_rows", "commits": commits, "rules": sorted(old), "rules_new": sorted(new),
          "columns_compared": sorted(c for c in next(iter(old.values())) if c not in NOT_RESULTS),
          "differences": diffs, "same": not diffs and sorted(old) == sorted(new)}, args, device="cpu")


if __name__ == "__main__":
    main()
