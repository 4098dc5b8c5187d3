"""bench/proxy_pool.py: proxies against a pool of retrained cells. With a pool whose 'retrained
accuracy' is NASWOT's own score, NASWOT must rank it perfectly (τ = ρ = 1) and the bootstrap
interval must hold 1."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import proxy_pool  # noqa: E402

from nas.models.genotypes import genotype_to_json  # noqa: E402
from nas.runtime import stats  # noqa: E402
from nas.runtime.errors import FerNasError  # noqa: E402
from nas.search.random_cells import sample_genotype  # noqa: E402


def test_proxy_pool_on_a_pool_ranked_by_naswot(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    pool = tmp_path / "pool"
    (pool / "genotypes").mkdir(parents=True)
    (pool / "protocol.json").write_text(json.dumps(
        {"size": 200, "public_size": 20, "private_size": 20, "train": {"init_channels": 2, "layers": 3}}))
    names = [f"random_{k:02d}" for k in range(5)]
    for k, n in enumerate(names):
        g = sample_genotype(["conv_1x1", "skip_connect", "max_pool_3x3", "sep_conv_3x3"], seed=k)
        (pool / "genotypes" / f"{n}.json").write_text(genotype_to_json(g))
    scores = proxy_pool.zero_cost_scores(pool, names, batch_size=8, seed=0)
    with open(pool / "nas_eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["genotype", "kind", "train_seed", "params", "flops", "test_acc"])
        w.writeheader()
        order = sorted(names, key=lambda n: scores[n]["naswot"])
        for n in names:  # the size baselines: FLOPs in NASWOT's order, parameters against it
            w.writerow({"genotype": n, "kind": "random", "train_seed": 0, "params": 1000 - order.index(n),
                        "flops": 10 * order.index(n), "test_acc": scores[n]["naswot"]})
        # a cell whose seed 1 finished before its seed 0: not counted yet (it has no genotype file either)
        w.writerow({"genotype": "random_05", "kind": "random", "train_seed": 1, "params": 999, "flops": 9,
                    "test_acc": 50.0})
    doc = proxy_pool.main(proxy_pool.get_args_parser().parse_args(
        ["--pool", str(pool), "--batch_size", "8", "--out", str(tmp_path / "r.json"),
         "--png", str(tmp_path / "p.png"), "--md", str(tmp_path / "p.md")]))
    a = doc["proxies"]["naswot"]
    assert a["kendall_tau"] == pytest.approx(1.0) and a["spearman_rho"] == pytest.approx(1.0)
    assert a["tau_low"] <= 1.0 <= a["tau_high"] + 1e-9 and doc["cells"] == 5 and doc["unfinished"] == ["random_05"]
    assert set(doc["proxies"]) == {"naswot", "synflow", "snip", "grad_norm", "jacob_cov", "vote", "params", "flops"}
    assert doc["proxies"]["flops"]["kendall_tau"] == pytest.approx(1.0)
    assert doc["proxies"]["params"]["kendall_tau"] == pytest.approx(-1.0)
    assert json.loads((tmp_path / "r.json").read_text())["provenance"]["flags"]["batch_size"] == 8
    assert (tmp_path / "p.png").stat().st_size > 0
    # one seed per cell: the power of τ on 5 cells, no seed spread and so no ceiling
    md = (tmp_path / "p.md").read_text()
    assert "| naswot | 5 | +1.00 (" in md and "| params | 5 | -1.00 (" in md
    assert "Not counted until each of their training seeds has finished: random_05." in md
    assert "Target (c)" in md and "naswot" in md.split("Target (c)")[1] and "params" not in md.split("Target (c)")[1]
    assert doc["power"]["cells"] == 5 and doc["power"]["tau_mde"] == pytest.approx(stats.tau_mde(5))
    assert doc["power"]["tau_ceiling"] is None                # NaN, which the JSON writes as null
    with pytest.raises(FerNasError, match="at least 3 retrained random cells"):
        proxy_pool.main(proxy_pool.get_args_parser().parse_args(["--pool", str(tmp_path / "empty")]))


def test_pool_power_by_hand():
    rows = [{"genotype": g, "kind": "random", "test_acc": str(a)}
            for g, accs in {"a": (90, 92), "b": (93, 95), "c": (96, 98)}.items() for a in accs]
    rows.append({"genotype": "s", "kind": "searched", "test_acc": "50"})  # not the pool's
    p = proxy_pool.pool_power(rows)
    # means 91, 94, 97 (SD 3); every cell's seeds 2 apart (variance 2); 2 seeds: 9 - 2/2 = 8
    assert p["cells"] == 3 and p["sd_cells"] == pytest.approx(3.0) and p["sd_seeds"] == pytest.approx(math.sqrt(2))
    assert p["sd_between_cells"] == pytest.approx(math.sqrt(8.0))
    assert p["tau_ceiling"] == pytest.approx(2 / math.pi * math.asin(math.sqrt(8 / 9)))
