"""Do the proxies rank cells as retraining does? Zero-cost and one-shot proxies against a pool of
retrained random cells.

    python bench/proxy_pool.py --pool bench/grids/searchpool [--batch_size 64] [--seed 0]
                               [--out bench/results-cpu-proxy-pool.json] [--png docs/img/proxy_pool.png]
                               [--md bench/grids/searchpool/proxies.md]

``--pool`` is a ``bench/nas_eval.py`` folder (its ``nas_eval.csv`` rows, its ``genotypes/`` and its
``protocol.json``): the random cells' mean PrivateTest over their training seeds is the reference
ranking (a cell counts once all its seeds have finished); nothing is retrained here. Each cell is
built as the protocol retrains it and scored at initialisation on one seeded Training batch of the
protocol's data by the five zero-cost proxies (:mod:`nas.search.proxies`) and by their rank vote;
the one-shot proxies of the pool's searches (``oneshot.csv``: alpha score, supernet accuracy with
the cell forced) are read when the folder has them, and so are the cells' parameters and FLOPs (the
trivial baselines). Per proxy: Kendall τ and Spearman ρ against the retrained accuracy, each with a
95 % bootstrap interval over the cells (2,000 resamples, seeded). Beside them, what a τ can show:
the smallest τ the pool detects at 80 % power, the τ a perfect proxy expects given how much the
cells differ against how much one cell's trainings do (``power``), and how well one training seed
ranks the cells as the other does (``seed_rank_agreement``). One JSON document with provenance; a
PNG of each proxy against the accuracy; a Markdown table of the same with target (c) (``--md``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit, finished_cells, num, read_rows, seed_rank_agreement
else:
    from bench.common import add_out_arg, emit, finished_cells, num, read_rows, seed_rank_agreement


def pool_accuracy(rows: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Mean PrivateTest over training seeds of every random cell of a nas_eval CSV."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        if r.get("kind") == "random" and num(r.get("test_acc")) is not None:
            acc.setdefault(r["genotype"], []).append(float(r["test_acc"]))
    return {g: sum(v) / len(v) for g, v in acc.items()}


def pool_power(rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """What a τ on the pool can show: the smallest τ its cells detect at 80 % power, and the τ a
    perfect proxy expects against their seed-averaged accuracy (the cells' spread less the
    seeds' share, against the seeds' spread; :func:`nas.runtime.stats.tau_ceiling`)."""
    import numpy as np

    from nas.runtime.stats import tau_ceiling, tau_mde

    by: dict[str, list[float]] = {}
    for r in rows:
        if r.get("kind") == "random" and num(r.get("test_acc")) is not None:
            by.setdefault(r["genotype"], []).append(float(r["test_acc"]))
    means = [float(np.mean(v)) for v in by.values()]
    seed_vars = [float(np.var(v, ddof=1)) for v in by.values() if len(v) > 1]
    sd_cells = float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")
    sd_seeds = math.sqrt(float(np.mean(seed_vars))) if seed_vars else float("nan")
    k = float(np.mean([len(v) for v in by.values()])) if by else float("nan")
    sd_between = (math.sqrt(max(0.0, sd_cells ** 2 - sd_seeds ** 2 / k))
                  if all(math.isfinite(v) for v in (sd_cells, sd_seeds, k)) else float("nan"))
    return {"cells": len(by), "tau_mde": tau_mde(len(by)), "sd_cells": sd_cells, "sd_seeds": sd_seeds,
            "seeds_per_cell": k, "sd_between_cells": sd_between,
            "tau_ceiling": tau_ceiling(sd_between, sd_seeds, k)}


def agreement(scores: Sequence[float], accs: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Kendall τ and Spearman ρ of ``scores`` against ``accs`` with bootstrap intervals."""
    from nas.runtime.stats import bootstrap_ci, kendall_tau, spearman_rho

    keep = [(s, a) for s, a in zip(scores, accs) if s is not None and math.isfinite(s)]
    if len(keep) < 3:
        return {"n": len(keep)}
    s, a = [k[0] for k in keep], [k[1] for k in keep]
    tau = bootstrap_ci(s, a, kendall_tau, seed=seed)
    rho = bootstrap_ci(s, a, spearman_rho, seed=seed)
    return {"n": len(keep), "kendall_tau": tau[0], "tau_low": tau[1], "tau_high": tau[2],
            "spearman_rho": rho[0], "rho_low": rho[1], "rho_high": rho[2]}


#: issue 34's target (c): a proxy that ranks the pool with at least this Kendall τ, its interval above 0
TARGET_TAU = 0.3


def proxies_markdown(doc: Mapping[str, Any]) -> str:
    """The τ/ρ table of a proxy_pool document, its power, its noise ceiling and target (c)."""
    def f(v: Any, fmt: str = "+.2f") -> str:
        return "–" if v is None or not math.isfinite(v) else format(v, fmt)

    lines = ["| proxy | cells | Kendall τ (95 % bootstrap) | Spearman ρ (95 % bootstrap) |", "|---|---:|---|---|"]
    met = []
    for k, a in doc["proxies"].items():
        tau, lo = a.get("kendall_tau"), a.get("tau_low")
        lines.append(f"| {k} | {a['n']} | {f(tau)} ({f(lo)} to {f(a.get('tau_high'))}) | "
                     f"{f(a.get('spearman_rho'))} ({f(a.get('rho_low'))} to {f(a.get('rho_high'))}) |")
        if tau is not None and lo is not None and tau >= TARGET_TAU and lo > 0:
            met.append(k)
    pw, agree = doc.get("power") or {}, doc.get("seed_rank_agreement") or {}
    lines += ["", f"Power: {doc['cells']} cells detect τ ≥ {f(pw.get('tau_mde'), '.2f')} at 80 % power. The cells' "
                  f"means spread by {f(pw.get('sd_cells'), '.2f')} points, one cell's training seeds by "
                  f"{f(pw.get('sd_seeds'), '.2f')}; less the seeds' share the cells differ by "
                  f"{f(pw.get('sd_between_cells'), '.2f')}, so a perfect proxy expects τ "
                  f"{f(pw.get('tau_ceiling'), '.2f')} against their seed-averaged accuracy. Training seed 0 ranks "
                  f"{agree.get('cells', 0)} cells as seed 1 does with τ {f(agree.get('kendall_tau'))} "
                  f"({f(agree.get('tau_low'))} to {f(agree.get('tau_high'))}).",
              "", f"Target (c), a proxy with τ ≥ {TARGET_TAU} and its interval above 0: "
                  + (f"met by {', '.join(met)}." if met else "met by none.")]
    if doc.get("unfinished"):
        lines += ["", f"Not counted until each of their training seeds has finished: {', '.join(doc['unfinished'])}."]
    return "\n".join(lines) + "\n"


def zero_cost_scores(pool: Path, names: Sequence[str], batch_size: int, seed: int) -> dict[str, dict[str, float]]:
    """The five proxies and the vote of every named cell, built at the protocol's retraining size."""
    import torch

    from nas.data import open_data
    from nas.data.augment import eval_views
    from nas.models import build_model
    from nas.search.proxies import PROXIES, rank_vote, score_network

    proto = json.loads((pool / "protocol.json").read_text())
    t = proto["train"]
    if proto.get("data"):
        data = open_data("auto", proto["data"])
    else:
        data = open_data("synthfer", size=proto["size"], seed=0, noise=0.0, public_size=proto.get("public_size"),
                         private_size=proto.get("private_size"))
    train = data.subset("Training")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train), generator=g)[:batch_size]
    x = eval_views(train.images[pick], mode="center", crop=44)[0]
    y = train.labels[pick]
    out = {}
    for k, name in enumerate(names):
        torch.manual_seed(seed * 100_003 + k)
        model = build_model(str(pool / "genotypes" / f"{name}.json"), init_channels=t["init_channels"],
                            layers=t["layers"], auxiliary=False)
        out[name] = score_network(model, x, y)
    votes = rank_vote([out[n] for n in names], list(PROXIES))
    for n, v in zip(names, votes):
        out[n]["vote"] = v
    return out


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/proxy_pool.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="a bench/nas_eval.py folder with retrained random cells")
    p.add_argument("--batch_size", type=int, default=64, help="Training images the proxies see")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch, the weights and the bootstrap")
    p.add_argument("--png", default=None, help="also draw each proxy against the retrained accuracy")
    p.add_argument("--md", default=None, help="also write the τ/ρ table, the power and target (c) as Markdown here")
    add_out_arg(p)
    return p


def plot(doc: Mapping[str, Any], path: Path) -> Path | None:
    from nas.engine.report import have_matplotlib, save_figure

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    names = list(doc["accuracy"])
    proxies = [p for p in doc["proxies"] if doc["proxies"][p].get("n", 0) >= 3]
    if not proxies:
        return None
    cols = min(5, len(proxies))
    rows = math.ceil(len(proxies) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(proxies):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, proxies):
        xs = [doc["scores"][n].get(p) for n in names]
        ax.scatter(xs, [doc["accuracy"][n] for n in names], s=12)
        finite = [x for x in xs if x is not None and math.isfinite(x)]
        if finite and min(finite) > 0 and max(finite) > 1e3 * min(finite):
            ax.set_xscale("log")  # synflow spans orders of magnitude
        a = doc["proxies"][p]
        ax.set_title(f"{p}: τ {a['kendall_tau']:+.2f} [{a['tau_low']:+.2f}, {a['tau_high']:+.2f}]", fontsize=8)
        ax.set_xlabel(p, fontsize=8)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("retrained PrivateTest % (mean of seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError
    from nas.search.proxies import PROXIES

    pool = Path(args.pool)
    # a cell counts once each of its training seeds has finished (a pool read between sessions)
    rows, unfinished = finished_cells(read_rows(pool / "nas_eval.csv"))
    acc = pool_accuracy(rows)
    if len(acc) < 3 or not (pool / "protocol.json").exists():
        raise FerNasError(f"--pool {pool}: needs a nas_eval folder with at least 3 retrained random cells "
                          f"(found {len(acc)})")
    if args.batch_size < 2:
        raise FerNasError(f"--batch_size {args.batch_size}: at least 2 images")
    names = sorted(acc)
    scores = zero_cost_scores(pool, names, args.batch_size, args.seed)
    # the one-shot proxies of each search of the pool's folder, averaged over its searches
    oneshot: dict[str, dict[str, list[float]]] = {}
    for r in read_rows(pool / "oneshot.csv"):
        if r["genotype"] in acc:
            for key in ("alpha_score", "oneshot_acc"):
                if num(r.get(key)) is not None:
                    oneshot.setdefault(r["genotype"], {}).setdefault(key, []).append(float(r[key]))
    for n in names:
        for key, vals in oneshot.get(n, {}).items():
            scores[n][key] = sum(vals) / len(vals)
    # the trivial baselines a proxy has to beat (Abdelfattah et al. 2021 report them beside theirs):
    # the network's size, read from the pool's rows
    for r in rows:
        if r["genotype"] in scores:
            for key in ("params", "flops"):
                if num(r.get(key)) is not None:
                    scores[r["genotype"]][key] = float(r[key])
    keys = [*PROXIES, "vote", "params", "flops", *(["alpha_score", "oneshot_acc"] if oneshot else [])]
    accs = [acc[n] for n in names]
    doc = {"bench": "proxy_pool", "pool": str(pool), "cells": len(names), "unfinished": unfinished,
           "accuracy": acc, "scores": scores,
           "proxies": {k: agreement([scores[n].get(k) for n in names], accs, args.seed) for k in keys},
           # the noise ceiling: how well one training of each cell ranks the pool as the other does
           "seed_rank_agreement": seed_rank_agreement(rows, seed=args.seed),
           # the power of the τ above, and the ceiling that training noise puts on it
           "power": pool_power(rows)}
    if args.png:
        plot(doc, Path(args.png))
    full = emit(doc, args, device="cpu", indent=None)
    if args.md:
        from nas.runtime.checkpoint import atomic_write_text

        atomic_write_text(proxies_markdown(full), Path(args.md))
    return full


if __name__ == "__main__":
    cli_run(main, get_args_parser())
