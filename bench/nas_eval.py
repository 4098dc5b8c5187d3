"""Does the search find better cells than chance? Searched cells against random cells of the
same space, retrained with one recipe.

    python bench/nas_eval.py [--out runs/nas_eval] [--quick] [--workers 2]
                             [--strategies sgas,darts,beta_darts,darts_minus] [--search_seeds 3]
                             [--random 10] [--train_seeds 2] [--summary_only]

On SynthFER (v2, ``--size`` images, difficulty 1):

1. every strategy searches with ``--search_seeds`` seeds (``search.py``, each run its own folder);
2. ``--random`` random genotypes of the same space are drawn, each within ±15 % of a parameter
   count at the retraining size (rejection sampling, :mod:`nas.search.random_cells`): the
   median of the space's random cells (recipe ``random_match: space``, the documented protocol:
   a fixed pool that later strategies join) or the searched cells' mean (``searched``); beside
   them the named references FER_V1 and DARTS_V2;
3. every genotype is retrained from scratch with one recipe and ``--train_seeds`` seeds
   (``train_searched.py``), PrivateTest at the best-PublicTest epoch.

Each search and each (genotype, seed) training is one idempotent unit of work with its own run
folder: a finished one is read back, an interrupted one resumes from its ``last.pt``.
``--workers N`` runs them in a local process pool (one torch thread each). ``nas_eval.csv``
gets one row per trained network (parameters, FLOPs, PublicTest, PrivateTest);
``summary.json`` and ``summary.md`` give per genotype the mean and 95 % interval over training
seeds, each searched cell's percentile among the random ones, a permutation test of searched
against random, and the agreement between search seeds; ``nas_eval.png`` plots accuracy
against parameters (random cells grey, searched coloured by strategy, references labelled).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from nas.runtime.checkpoint import atomic_write_text
from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import FolderLock, check_protocol, num as _num, process_pool, provenance, provenance_columns, \
        PROVENANCE_COLUMNS, finished_cells, read_rows, run_or_resume, \
        seed_rank_agreement
else:
    from bench.common import FolderLock, check_protocol, num as _num, process_pool, provenance, provenance_columns, \
        PROVENANCE_COLUMNS, finished_cells, read_rows, run_or_resume, \
        seed_rank_agreement
from nas.runtime.stats import n_for_mde, percentile_among, size_adjusted, t_interval, tau_ceiling, tau_mde, \
    two_sample

CSV_NAME = "nas_eval.csv"
PROXY_CSV = "oneshot.csv"
PROXY_COLUMNS = ["search", "strategy", "search_seed", "genotype", "alpha_score", "oneshot_acc", *PROVENANCE_COLUMNS]
COLUMNS = ["genotype", "kind", "strategy", "search_seed", "train_seed", "params", "flops", "val_acc", "test_acc",
           "selected_epoch", "last_test_acc", "last_epoch", "seconds", *PROVENANCE_COLUMNS]
REFERENCES = ("FER_V1", "DARTS_V2")

# The documented CPU size, and the --quick one (tests, smoke runs).
# random_match: "searched" draws the random cells within ±15 % of the searched cells' mean size
# (so they depend on which searches ran); "space" within ±15 % of the median size of the space's
# random cells at the retraining size (a fixed pool: later strategies join the same folder and
# reuse its retrained cells). sgas_warmup: SGAS epochs before its first decision.
# The documented CPU size (docs/search-vs-random.md): a fixed pool; SGAS decides after a warm-up in
# which the architecture weights have moved (bench/sgas_warmup.py); 24 retraining epochs (the
# summary counts the runs still selected at their last epoch).
FULL: dict[str, Any] = {
    "size": 3000, "public_size": 2000, "private_size": 3000, "space": "darts", "random_match": "space",
    "search": {"init_channels": 8, "layers": 5, "batch_size": 32, "crop": 32, "darts_epochs": 10,
               "train_portion": 0.5, "sgas_warmup": 3, "arch_learning_rate": 1e-2},
    "train": {"init_channels": 8, "layers": 5, "epochs": 24, "batch_size": 64, "learning_rate": 0.025},
}
QUICK: dict[str, Any] = {
    "size": 400, "public_size": 100, "private_size": 100, "space": "none,max_pool_3x3,skip_connect,sep_conv_3x3,dil_conv_3x3",
    "random_match": "searched",
    "search": {"init_channels": 4, "layers": 3, "batch_size": 16, "crop": 24, "darts_epochs": 1, "train_portion": 0.5,
               "sgas_warmup": 0, "arch_learning_rate": 3e-4},
    "train": {"init_channels": 4, "layers": 3, "epochs": 1, "batch_size": 32, "learning_rate": 0.025},
}
RANDOM_MATCHES = ("searched", "space")
#: the random cells' (and, with a fixed pool, the zero-cost candidates') parameter band: target ± 15 %
MATCH_TOL = 0.15
#: zero_cost scores candidates on this many Training images, centre-cropped to the retrained
#: network's input size (NetworkFER's default, what train_searched.py uses): bench/proxy_pool.py's batch
PROXY_BATCH, RETRAIN_CROP = 64, 44
#: strategies that train no supernet (so no one-shot proxies)
NO_SUPERNET = ("random", "zero_cost")
#: keys of a folder's protocol that only add units when they grow, where the pool is fixed
GROWING = ("strategies", "search_seeds", "random", "train_seeds", "references")


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/nas_eval.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/nas_eval", help="folder of the runs, the CSV, the summary and the PNG")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 400 images, tiny networks, one epoch, one darts search and one random cell")
    p.add_argument("--strategies", default=None,
                   help="search strategies, comma-separated, or none for the random pool alone (default "
                        "sgas,darts,beta_darts,darts_minus; quick: darts)")
    p.add_argument("--search_seeds", type=int, default=None, help="search seeds 0..S-1 (default 3; quick 1)")
    p.add_argument("--random", type=int, default=None, help="random genotypes (default 30; quick 1)")
    p.add_argument("--train_seeds", type=int, default=None, help="training seeds per genotype (default 2; quick 1)")
    p.add_argument("--references", default=None, help="named genotypes retrained beside (default FER_V1,DARTS_V2; "
                                                       "quick: none)")
    p.add_argument("--data", default=None,
                   help="your data instead of SynthFER (a fer2013.csv or any format the toolkit reads); search "
                        "sees its Training split only, selection uses PublicTest, the figure is PrivateTest")
    p.add_argument("--recipe", default=None,
                   help="a JSON file whose keys replace the protocol's sizes (FULL in this file: size, space, "
                        "search.{init_channels,layers,batch_size,crop,darts_epochs,train_portion}, "
                        "train.{init_channels,layers,epochs,batch_size,learning_rate})")
    p.add_argument("--size", type=int, default=None,
                   help="SynthFER images; Training is 80 %% of them (default 3000; quick 400)")
    p.add_argument("--public_size", type=int, default=None, help="SynthFER PublicTest faces (default 2000; quick 100)")
    p.add_argument("--private_size", type=int, default=None,
                   help="SynthFER PrivateTest faces (default 3000; quick 100)")
    p.add_argument("--train_epochs", type=int, default=None, help="retraining epochs (default 8; quick 1)")
    p.add_argument("--workers", type=int, default=1, help="units of work at once (one torch thread each when > 1)")
    p.add_argument("--device", default="cpu", help="device of every unit (cuda on GPU nodes)")
    p.add_argument("--executor", choices=["pool", "submitit"], default="pool",
                   help="pool: --workers local processes; submitit: every unit a submitit job (Slurm array, "
                        "or --cluster local/debug), pip install -e '.[cluster]'")
    p.add_argument("--cluster", default=None,
                   help="submitit cluster: slurm, local or debug (default: slurm where sbatch exists, else local)")
    p.add_argument("--slurm_partition", default=None, help="Slurm partition of the units")
    p.add_argument("--gpus_per_unit", type=int, default=0, help="GPUs per unit on Slurm (with --device cuda)")
    p.add_argument("--timeout_min", type=int, default=240, help="time limit per unit on Slurm, minutes")
    p.add_argument("--summary_only", action="store_true", help="rebuild the summary and PNG from the CSV")
    return p


# ----------------------------------------------------------------------------- units of work
def merge_recipe(recipe: dict[str, Any], path: str) -> dict[str, Any]:
    """``recipe`` with the values of the JSON file ``path`` (unknown keys refused)."""
    from nas.runtime.errors import FerNasError

    try:
        over = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FerNasError(f"--recipe {path}: cannot read it as JSON ({e})") from None
    if not isinstance(over, dict):
        raise FerNasError(f"--recipe {path}: expected a JSON object")
    for k, v in over.items():
        if k not in recipe:
            raise FerNasError(f"--recipe {path}: unknown key {k!r} (known: {', '.join(recipe)})")
        if isinstance(recipe[k], dict):
            bad = [x for x in (v if isinstance(v, dict) else {None: 0}) if x not in recipe[k]]
            if bad:
                raise FerNasError(f"--recipe {path}: {k} takes {', '.join(recipe[k])}, not {bad[0]!r}")
            recipe[k].update(v)
        else:
            recipe[k] = v
    return recipe


def _data_flags(recipe: Mapping[str, Any]) -> list[str]:
    if recipe.get("data"):
        return ["--data", str(recipe["data"])]
    # Training is 80 % of size; the test splits have their own sizes (and people): search sees
    # Training only, so the searched cells do not depend on the test sizes
    return ["--dataset", "synthfer", "--synth_renderer", "v2", "--synth_size", str(recipe["size"]),
            "--synth_public_size", str(recipe["public_size"]), "--synth_private_size",
            str(recipe["private_size"]), "--synth_noise", "0", "--synth_difficulty", "1.0",
            "--data_seed", "0"]


def search_unit(out: str, strategy: str, seed: int, recipe: Mapping[str, Any], device: str,
                threads: int | None, target: int | None = None) -> dict[str, Any]:
    """One search (idempotent): its genotype as a dict. ``target``: a fixed pool's median size
    (:func:`space_median_params`), the centre of zero_cost's parameter band."""
    import torch

    from nas.apps import search as search_app

    if threads:
        torch.set_num_threads(threads)
    folder = Path(out) / f"search-{strategy}-s{seed}"
    s = recipe["search"]
    if strategy == "zero_cost":  # each candidate scored as the network it will be retrained as, on the
        t = recipe["train"]      # batch bench/proxy_pool.py measures the proxies with
        s = {**s, "init_channels": t["init_channels"], "layers": t["layers"], "batch_size": PROXY_BATCH,
             "crop": RETRAIN_CROP}
    argv = ["--strategy", strategy, "--search_space", recipe["space"], "--init_channels", s["init_channels"],
            "--layers", s["layers"], "--batch_size", s["batch_size"], "--crop", s["crop"], "--seed", seed,
            "--train_portion", s["train_portion"], "--arch_learning_rate", s["arch_learning_rate"],
            "--device", device, *_data_flags(recipe)]
    if strategy == "sgas":  # a decision at the end of each epoch after the warm-up: warm-up + 8 epochs
        argv += ["--batch_increase", "0", "--warmup_dec_epoch", s["sgas_warmup"], "--decision_freq", "1",
                 "--epochs_after_last_decision", "0"]
    elif strategy == "zero_cost" and recipe["random_match"] == "space":
        # the pool's parameter band: the proxies grow with size, so an unbounded search would keep a
        # larger cell than the pool's and the comparison would measure size, not the proxy
        if target is None:
            from nas.models.ops import search_space

            target = space_median_params(search_space(recipe["space"]), recipe)
        argv += ["--zc_min_params", math.ceil(target * (1 - MATCH_TOL)), "--zc_max_params",
                 math.floor(target * (1 + MATCH_TOL))]
    elif strategy not in NO_SUPERNET:
        argv += ["--epochs", s["darts_epochs"]]
    if strategy not in NO_SUPERNET:  # the supernet's accuracy per epoch beside the entropy (metrics.csv)
        argv += ["--post_val"]
    res = run_or_resume(search_app, folder, argv, done="done.json")  # search writes no results.json: this row
    out_row = {"strategy": strategy, "seed": seed, "genotype": res["genotype"]}
    atomic_write_text(json.dumps(out_row) + "\n", folder / "done.json")
    return out_row


def count_params(genotype: Any, recipe: Mapping[str, Any]) -> int:
    """Parameters (no auxiliary head) of the network built at the retraining size: what the
    random cells are matched on (no forward pass, so rejection sampling stays cheap)."""
    from nas.models import build_model, count_parameters

    t = recipe["train"]
    return count_parameters(build_model(genotype, init_channels=t["init_channels"], layers=t["layers"],
                                        auxiliary=False))


def space_median_params(space: Sequence[str], recipe: Mapping[str, Any], draws: int = 500) -> int:
    """The median parameter count, at the retraining size, of ``draws`` random cells of ``space``
    (seed 1, a stream apart from the pool's own draws): the size a fixed pool is matched to."""
    from nas.search.random_cells import sample_genotype

    rng = np.random.default_rng(1)
    return int(np.median([count_params(sample_genotype(space, 4, rng), recipe) for _ in range(draws)]))


def count_params_flops(genotype: Any, recipe: Mapping[str, Any]) -> tuple[int, int]:
    """Parameters (no auxiliary head) and forward FLOPs of one image at the network's input
    size, at the retraining size (``torch.utils.flop_counter``; a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nas.models import build_model, count_parameters

    t = recipe["train"]
    model = build_model(genotype, init_channels=t["init_channels"], layers=t["layers"], auxiliary=False).eval()
    crop = getattr(model, "default_input_size", 44) or 44
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, crop, crop))
    return count_parameters(model), int(fc.get_total_flops())


def train_unit(out: str, name: str, genotype_path: str, seed: int, recipe: Mapping[str, Any], device: str,
               threads: int | None) -> dict[str, Any]:
    """One retraining (idempotent): the run's results.json."""
    import torch

    from nas.apps import train as train_app

    if threads:
        torch.set_num_threads(threads)
    t = recipe["train"]
    return run_or_resume(train_app, Path(out) / f"train-{name}-s{seed}",
                         ["--arch", genotype_path, "--init_channels", t["init_channels"], "--layers", t["layers"],
                          "--epochs", t["epochs"], "--batch_size", t["batch_size"], "--learning_rate",
                          t["learning_rate"], "--seed", seed, "--snapshot_at", "", "--test_curve", "False",
                          "--device", device,
                          *_data_flags(recipe)])


def proxy_rows(out: Path, searched: Sequence[Mapping[str, Any]], genos: Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """The one-shot proxies (:mod:`nas.search.oneshot`) of every genotype (random, searched,
    references whose ops are in the space) under every finished search's supernet, one
    ``oneshot.csv`` row each; rows already there are kept."""
    from nas.models.genotypes import genotype_from_dict
    from nas.search.oneshot import alpha_score, load_supernet, oneshot_accuracy

    path = out / PROXY_CSV
    have = {(r["search"], r["genotype"]) for r in read_rows(path)}
    for s in searched:
        if s["strategy"] in NO_SUPERNET:
            continue
        folder = out / f"search-{s['strategy']}-s{s['seed']}"
        todo = [g for g in genos if (folder.name, g["name"]) not in have]
        if not todo or not (folder / "last.pt").exists():
            continue
        model, images, labels, crop = load_supernet(folder)
        for g in todo:
            geno = genotype_from_dict(g["genotype"])
            if any(op not in model.primitives for op, _ in [*geno.normal, *geno.reduce]):
                continue  # a reference from another space
            row = {"search": folder.name, "strategy": s["strategy"], "search_seed": s["seed"], "genotype": g["name"],
                   "alpha_score": round(alpha_score(model, geno), 5),
                   "oneshot_acc": round(oneshot_accuracy(model, geno, images, labels, crop=crop), 3),
                   **provenance_columns(provenance({"search": folder.name, "genotype": g["name"]}))}
            _append(path, row, PROXY_COLUMNS)
    return read_rows(path)


def search_curves(out: Path, searched: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per search with a supernet, from its ``metrics.csv``: per epoch the entropy of the undecided
    edges' architecture weights (1 = uniform; read before that epoch's decisions), the supernet's
    accuracy on the architecture half of Training and the parameter-free share of its genotype;
    and the epoch of SGAS's first decision with the entropy it was taken at."""
    curves: dict[str, dict[str, Any]] = {}
    for s in searched:
        if s["strategy"] in NO_SUPERNET:
            continue
        folder = out / f"search-{s['strategy']}-s{s['seed']}"
        rows = read_rows(folder / "metrics.csv")
        if not rows:
            continue
        entropy = [_num(r.get("alpha_entropy")) for r in rows]
        first = next((k for k, r in enumerate(rows) if r.get("decided")), None)
        curves[folder.name] = {
            "strategy": s["strategy"], "search_seed": s["seed"], "epochs": len(rows), "alpha_entropy": entropy,
            "supernet_acc": [_num(r.get("valid_acc")) for r in rows],
            "param_free_share": [_num(r.get("param_free_share")) for r in rows],
            "epoch_seconds": [_num(r.get("time_s")) for r in rows],
            "first_decision_epoch": None if first is None else first + 1,
            "entropy_at_first_decision": None if first is None else entropy[first]}
    return curves


def plot_search_curves(curves: Mapping[str, Mapping[str, Any]], path: Path, *,
                       title: str = "Does the supernet learn before it decides? The protocol's searches",
                       xlabel: str = "search epoch (ring: the first decision, at its end)",
                       hline: float | None = None) -> Path | None:
    """The searches' entropy and supernet accuracy per epoch, a line per search (the key is its
    label; a curve may name its ``color``); a ring marks the epoch at whose end SGAS took its
    first decision, ``hline`` draws a level on the entropy panel. Also ``bench/sgas_warmup.py``'s."""
    from nas.engine.report import have_matplotlib, save_figure

    if not curves or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        x = list(range(1, c["epochs"] + 1))
        for ax, key in zip(axes, ("alpha_entropy", "supernet_acc")):
            pts = [(e, v) for e, v in zip(x, c[key]) if v is not None]
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=name, color=c.get("color"))
            k = c.get("first_decision_epoch")
            if k is not None and c[key][k - 1] is not None:
                ax.plot([k], [c[key][k - 1]], "o", ms=10, mfc="none", color=line.get_color())
    if hline is not None:
        axes[0].axhline(hline, color="0.5", ls=":", lw=0.8, label=f"{1 - hline:g} below uniform")
    axes[0].set_ylabel("entropy of softmax(α), undecided edges (1 = uniform)")
    axes[1].set_ylabel("supernet accuracy on the α half of Training (%)")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def proxy_taus(proxies: Sequence[Mapping[str, Any]], accs: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per search, Kendall τ of each proxy against the retrained accuracy of the cells in
    ``accs`` (the random ones)."""
    from nas.runtime.stats import kendall_tau

    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in proxies:
        if r["genotype"] in accs:
            by.setdefault(r["search"], []).append(r)
    out = {}
    for search, rs in sorted(by.items()):
        acc = [accs[r["genotype"]] for r in rs]
        out[search] = {"strategy": rs[0]["strategy"], "n": len(rs),
                       "tau_alpha": kendall_tau([float(r["alpha_score"]) for r in rs], acc),
                       "tau_oneshot": kendall_tau([float(r["oneshot_acc"]) for r in rs], acc)}
    return out


# ----------------------------------------------------------------------------- statistics
def seed_agreement(genotypes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over pairs of search seeds of the share of chosen edges (node, input) in common,
    and of chosen (node, input, op) in common, both cells together."""
    def edges(g: Mapping[str, Any], with_op: bool) -> set:
        out = set()
        for cell in ("normal", "reduce"):
            for k, (op, j) in enumerate(g[cell]):
                out.add((cell, k // 2, int(j), op) if with_op else (cell, k // 2, int(j)))
        return out

    pairs = list(itertools.combinations(genotypes, 2))
    if not pairs:
        return {"edges": float("nan"), "edges_and_ops": float("nan"), "pairs": 0}
    e = [len(edges(a, False) & edges(b, False)) / len(edges(a, False)) for a, b in pairs]
    o = [len(edges(a, True) & edges(b, True)) / len(edges(a, True)) for a, b in pairs]
    return {"edges": 100 * float(np.mean(e)), "edges_and_ops": 100 * float(np.mean(o)), "pairs": len(pairs)}


def summarize(rows: Sequence[Mapping[str, Any]], searched: Sequence[Mapping[str, Any]],
              proxies: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Per genotype mean ± interval; percentiles, the comparison of each strategy's cells with
    the random ones (:func:`nas.runtime.stats.two_sample`: difference, interval, exact
    permutation p, the smallest difference detectable at 80 % power), seed agreement, how many
    runs were selected at their last epoch, and the one-shot proxies' Kendall τ against the
    random cells' retrained accuracy."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["genotype"], []).append(r)
    table = []
    for name, rs in sorted(by.items()):
        accs = [x for x in (_num(r["test_acc"]) for r in rs) if x is not None]
        if not accs:
            continue
        m, ci = t_interval(accs)
        table.append({"genotype": name, "kind": rs[0]["kind"], "strategy": rs[0]["strategy"],
                      "search_seed": rs[0]["search_seed"], "params": int(float(rs[0]["params"])),
                      "flops": int(float(rs[0]["flops"])), "seeds": len(accs), "test_acc": m, "test_acc_ci": ci,
                      "test_acc_min": min(accs), "test_acc_max": max(accs)})
    randoms = [e for e in table if e["kind"] == "random"]
    random_means = [e["test_acc"] for e in randoms]
    for e in table:
        if e["kind"] != "random":
            e["percentile_vs_random"] = percentile_among(e["test_acc"], random_means)
    strategies = sorted({e["strategy"] for e in table if e["kind"] == "searched"})
    taus = proxy_taus(proxies, {e["genotype"]: e["test_acc"] for e in table if e["kind"] == "random"})
    p75 = float(np.percentile(random_means, 75)) if random_means else None
    per_strategy = {}
    for s in strategies:
        mine = [e for e in table if e["kind"] == "searched" and e["strategy"] == s]
        gs = [g["genotype"] for g in searched if g["strategy"] == s]
        vs = two_sample([e["test_acc"] for e in mine], random_means) if random_means else None
        mean = float(np.mean([e["test_acc"] for e in mine]))
        p = vs.p if vs else float("nan")
        per_strategy[s] = {
            "mean_test_acc": mean,
            "cells": len(mine),
            # issue 34's target (b): the cells above the pool's 75th percentile, p < 0.05, ≥ 3 search seeds
            "above_pool_p75": p75 is not None and mean > p75,
            "target_b": p75 is not None and mean > p75 and p < 0.05 and len(mine) >= 3,
            "mean_percentile_vs_random": float(np.mean([e["percentile_vs_random"] for e in mine])),
            "p_value_vs_random": p,
            "vs_random": vs.as_dict() if vs else None,
            # the same comparison at equal size (the pool is matched to the space's median, a
            # searched cell need not be): one slope of accuracy on parameters (thousands) for both
            "vs_random_size_adjusted": size_adjusted(
                [e["test_acc"] for e in mine], [e["test_acc"] for e in randoms],
                [e["params"] / 1000 for e in mine], [e["params"] / 1000 for e in randoms])
            if len(randoms) > 2 else None,
            "seed_agreement": seed_agreement(gs),
            "param_free_share": float(np.mean([_param_free(g) for g in gs])) if gs else float("nan"),
            "kendall_tau_alpha": _mean_or_nan([t["tau_alpha"] for t in taus.values() if t["strategy"] == s]),
            "kendall_tau_oneshot": _mean_or_nan([t["tau_oneshot"] for t in taus.values() if t["strategy"] == s]),
        }
    at_last = [r for r in rows if _num(r.get("selected_epoch")) is not None and _num(r.get("last_epoch")) is not None
               and int(float(r["selected_epoch"])) == int(float(r["last_epoch"]))]
    return {"genotypes": table, "strategies": per_strategy, "proxy_taus": taus,
            "seed_rank_agreement": seed_rank_agreement(rows),
            "selected_at_last_epoch": {"runs": len(at_last), "of": len(rows)},
            "training_seconds": _seconds(rows),
            "power": power_plan(table, by),
            "random": {"n": len(random_means), "mean_test_acc": float(np.mean(random_means)) if random_means else None,
                       "p75_test_acc": p75}}


#: the difference the protocol should detect at 80 % power (issue 34), in points of PrivateTest
TARGET_MDE = 1.5


def power_plan(table: Sequence[Mapping[str, Any]], by: Mapping[str, Sequence[Mapping[str, Any]]],
               target: float = TARGET_MDE) -> dict[str, Any]:
    """The power analysis a pilot asks for: the spread of the cells' mean accuracies (pooled
    over the searched and the random group), the spread between training seeds of one cell
    (pooled over cells with two or more seeds), and how many cells per group a two-sample
    comparison needs to detect ``target`` points at 80 % power: with equal groups, and as random
    cells against the searched cells there are (None: no number of random cells is enough)."""
    groups = [[e["test_acc"] for e in table if e["kind"] == k] for k in ("searched", "random")]
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    sd_cells = (math.sqrt(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups if len(g) > 1) / dof)
                if dof else float("nan"))
    seed_vars = [float(np.var(a, ddof=1)) for a in
                 ([x for x in (_num(r["test_acc"]) for r in rs) if x is not None] for rs in by.values()) if len(a) > 1]
    sd_seeds = math.sqrt(float(np.mean(seed_vars))) if seed_vars else float("nan")
    n_searched, n_random = len(groups[0]), len(groups[1])
    # the spread of cells' means holds the seeds' noise too (sd_seeds² / seeds per cell): what is
    # left is how much the cells themselves differ
    counts = [e["seeds"] for e in table if e.get("seeds")]
    seeds_per_cell = float(np.mean(counts)) if counts else float("nan")
    sd_between = (math.sqrt(max(0.0, sd_cells ** 2 - sd_seeds ** 2 / seeds_per_cell))
                  if all(math.isfinite(v) for v in (sd_cells, sd_seeds, seeds_per_cell)) else float("nan"))
    return {"target_points": target, "sd_cells": sd_cells, "sd_seeds": sd_seeds, "sd_between_cells": sd_between,
            "cells_per_group": n_for_mde(sd_cells, target, paired=False),
            "random_cells_vs_searched": n_for_mde(sd_cells, target, paired=False, n_other=n_searched)
            if n_searched else None,
            # what a fixed pool asks of a strategy: its search seeds, against the pool's cells
            "searched_cells_vs_random": n_for_mde(sd_cells, target, paired=False, n_other=n_random)
            if n_random > 1 else None,
            "searched_cells": n_searched, "random_cells": n_random,
            # what a proxy's Kendall τ on the random cells can show: the smallest τ they detect at
            # 80 % power, and the τ a perfect proxy expects against their seed-averaged accuracy
            "proxy_tau_mde": tau_mde(n_random),
            "proxy_tau_ceiling": tau_ceiling(sd_between, sd_seeds, seeds_per_cell)}


def _seconds(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The trainings' wall time from the rows' ``seconds`` (a unit resumed after a stop counts only
    its last call, so the sum is a lower bound and the median the better figure)."""
    xs = [x for x in (_num(r.get("seconds")) for r in rows) if x is not None]
    return {"trainings": len(xs), "median": float(np.median(xs)) if xs else None, "sum": float(sum(xs))}


def _mean_or_nan(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _param_free(g: Mapping[str, Any]) -> float:
    from nas.models.genotypes import genotype_from_dict
    from nas.search.random_cells import parameter_free_share

    return parameter_free_share(genotype_from_dict(g))


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["| genotype | kind | strategy | seed | parameters | FLOPs | PrivateTest % | percentile vs random |",
             "|---|---|---|---|---:|---:|---|---:|"]
    for e in summary["genotypes"]:
        ci = "" if math.isnan(e["test_acc_ci"]) else f" ± {e['test_acc_ci']:.2f}"
        pct = e.get("percentile_vs_random")
        lines.append(f"| {e['genotype']} | {e['kind']} | {e['strategy']} | {e['search_seed']} | {e['params']:,} | "
                     f"{e['flops']:,} | {e['test_acc']:.2f}{ci} | {'' if pct is None else f'{pct:.0f}'} |")
    if summary.get("unfinished"):
        lines += ["", "Not counted until each of their training seeds has finished: "
                      f"{', '.join(summary['unfinished'])}."]
    lines += ["", "| strategy | mean PrivateTest % | mean percentile vs random | searched − random (95 % CI) | "
                  "p (searched > random) | detectable at 80 % power | seed agreement: edges / edges+ops % | "
                  "parameter-free share | Kendall τ: alphas / one-shot |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s, v in summary["strategies"].items():
        a = v["seed_agreement"]
        vs = v.get("vs_random") or {}
        diff = (f"{vs['diff']:+.2f} ({vs['low']:+.2f} to {vs['high']:+.2f})"
                if vs and all(vs.get(k) is not None and math.isfinite(vs[k]) for k in ("diff", "low", "high"))
                else "–")
        mde = vs.get("mde") if vs else None
        lines.append(f"| {s} | {v['mean_test_acc']:.2f} | {v['mean_percentile_vs_random']:.0f} | {diff} | "
                     f"{v['p_value_vs_random']:.3g} | {'–' if mde is None or not math.isfinite(mde) else f'{mde:.2f}'} | "
                     f"{a['edges']:.0f} / {a['edges_and_ops']:.0f} | "
                     f"{100 * v['param_free_share']:.0f} % | {v['kendall_tau_alpha']:.2f} / "
                     f"{v['kendall_tau_oneshot']:.2f} |")
    p75 = (summary.get("random") or {}).get("p75_test_acc")
    if p75 is not None and summary["strategies"]:
        verdicts = "; ".join(
            f"{s}: {'holds' if v.get('target_b') else 'not met'} ({v.get('cells', '?')} cell"
            f"{'' if v.get('cells') == 1 else 's'}, mean "
            f"{v['mean_test_acc']:.2f} %, p = {v['p_value_vs_random']:.3g})" for s, v in summary["strategies"].items())
        lines += ["", f"Target (b), a strategy's cells above the pool's 75th percentile ({p75:.2f} %) with "
                      f"p < 0.05 over at least 3 search seeds: {verdicts}."]
    adj = {k: v["vs_random_size_adjusted"] for k, v in summary["strategies"].items()
           if v.get("vs_random_size_adjusted") and math.isfinite(v["vs_random_size_adjusted"]["diff"])}
    if adj:
        lines += ["", "At equal size (accuracy on parameters, one slope for the random cells and the strategy's, "
                      "least squares; t-interval and one-sided p): " + "; ".join(
                          f"{k}: {a['diff']:+.2f} points ({a['low']:+.2f} to {a['high']:+.2f}), p = {a['p']:.3g}, "
                          f"slope {10 * a['slope']:+.2f} points per 10,000 parameters ({10 * a['slope_low']:+.2f} to "
                          f"{10 * a['slope_high']:+.2f}), {a['outside_b_range']} of its {a['n_a']} cells outside the "
                          f"random cells' size range" for k, a in adj.items()) + "."]
    pw = summary.get("power") or {}
    if pw and math.isfinite(pw.get("sd_cells", float("nan"))):
        def need(n):
            return "no number of random cells" if n is None else f"{n}"

        against = (f"{need(pw['random_cells_vs_searched'])} random cells against the {pw['searched_cells']} "
                   f"searched ones, or " if pw.get("searched_cells") else "")
        pool = ("no number of searched cells" if pw.get("searched_cells_vs_random") is None
                else f"{pw['searched_cells_vs_random']} searched cells (search seeds)")
        lines += ["", f"Power: the cells' mean accuracies spread by {pw['sd_cells']:.2f} points (SD), one cell's "
                      f"training seeds by {pw['sd_seeds']:.2f}; detecting {pw['target_points']} points at 80 % power "
                      f"needs {need(pw['cells_per_group'])} cells per group, {against}{pool} against the "
                      f"{pw.get('random_cells', '?')} random ones."]
        if math.isfinite(pw.get("sd_between_cells", float("nan"))):
            lines[-1] += (f" Less the seeds' share, the cells themselves differ by {pw['sd_between_cells']:.2f} "
                          f"points (SD).")
        if math.isfinite(pw.get("proxy_tau_mde", float("nan"))):
            lines[-1] += f" A proxy's τ on the random cells detects τ ≥ {pw['proxy_tau_mde']:.2f} at 80 % power"
            ceil = pw.get("proxy_tau_ceiling", float("nan"))
            lines[-1] += (f"; a perfect proxy expects τ {ceil:.2f} against their seed-averaged accuracy."
                          if math.isfinite(ceil) else ".")
    agree = summary.get("seed_rank_agreement") or {}
    if agree.get("cells", 0) >= 3 and math.isfinite(agree.get("kendall_tau", float("nan"))):
        lines += ["", f"Training seed 0 ranks the {agree['cells']} random cells as seed 1 does with Kendall τ "
                      f"{agree['kendall_tau']:.2f} (95 % bootstrap {agree['tau_low']:.2f} to {agree['tau_high']:.2f}): "
                      f"the ceiling a proxy's τ is read against."]
    searches = summary.get("searches") or {}
    if searches:
        def f(v, fmt):
            return "–" if v is None else format(v, fmt)

        lines += ["", "| search | epochs | entropy after epoch 1 | first decision: epoch / entropy | entropy at the end "
                      "| supernet accuracy, first / last epoch (%) | parameter-free share at the end |",
                  "|---|---:|---:|---|---:|---|---:|"]
        for name, c in searches.items():
            h, a, pf = c["alpha_entropy"], c["supernet_acc"], c["param_free_share"]
            last_h = next((v for v in reversed(h) if v is not None), None)
            lines.append(f"| {name} | {c['epochs']} | {f(h[0], '.5f')} | {f(c['first_decision_epoch'], 'd')} / "
                         f"{f(c['entropy_at_first_decision'], '.5f')} | {f(last_h, '.5f')} | {f(a[0], '.1f')} / "
                         f"{f(a[-1], '.1f')} | {f(None if pf[-1] is None else 100 * pf[-1], '.0f')} % |")
    last = summary.get("selected_at_last_epoch") or {}
    if last.get("of"):
        lines += ["", f"{last['runs']} of {last['of']} trainings were selected at their last epoch."]
    secs = summary.get("training_seconds") or {}
    if secs.get("median") is not None:
        lines += ["", f"Retraining took {secs['median'] / 60:.1f} minutes of wall time per training (median of "
                      f"{secs['trainings']}; {secs['sum'] / 3600:.1f} hours summed over them, a lower bound: a "
                      f"training resumed after a stop counts only its last call; units run side by side overlap "
                      f"in time)."]
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Accuracy against parameters: random cells grey, searched ones coloured by strategy,
    references labelled, a dotted line at the random cells' 75th percentile; bars span the training seeds' lowest to highest accuracy (with two
    seeds a 95 % t-interval is ±12.7 half-ranges, too wide to show anything)."""
    from nas.engine.report import have_matplotlib, save_figure

    if not summary["genotypes"] or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = dict(zip(summary["strategies"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for e in summary["genotypes"]:
        lo, hi = e.get("test_acc_min", e["test_acc"]), e.get("test_acc_max", e["test_acc"])
        err = [[e["test_acc"] - lo], [hi - e["test_acc"]]]
        if e["kind"] == "random":
            ax.errorbar(e["params"], e["test_acc"], yerr=err, fmt="o", color="0.6", ms=5, capsize=2,
                        label="random cells")
        elif e["kind"] == "searched":
            ax.errorbar(e["params"], e["test_acc"], yerr=err, fmt="s", color=colours.get(e["strategy"]), ms=6,
                        capsize=2, label=f"searched: {e['strategy']}")
        else:
            ax.errorbar(e["params"], e["test_acc"], yerr=err, fmt="D", color="black", ms=6, capsize=2)
            ax.annotate(e["genotype"], (e["params"], e["test_acc"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
    p75 = (summary.get("random") or {}).get("p75_test_acc")
    if p75 is not None:  # the bar of target (b): a strategy's cells should sit above it
        ax.axhline(p75, color="0.5", ls=":", lw=1, label="random cells' 75th percentile")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xlabel("parameters (retrained network, no auxiliary head)")
    ax.set_ylabel("PrivateTest % at the best-PublicTest epoch")
    ax.set_title("searched vs random cells (bars: lowest to highest training seed)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the protocol
def _append(path: Path, row: Mapping[str, Any], columns: Sequence[str] = COLUMNS) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def make_executor(args: argparse.Namespace, out: Path) -> Any:
    """A submitit executor for ``--executor submitit`` (``None`` for the local pool): its logs and
    pickled units go to ``out/submitit``."""
    if args.executor != "submitit":
        return None
    import os

    from nas.runtime.errors import FerNasError

    try:
        import submitit
    except ImportError:
        raise FerNasError("--executor submitit needs submitit: pip install -e '.[cluster]'") from None
    # a unit unpickles this script's functions by module name: the job's interpreter must
    # find bench/ and the project as this one does (Slurm and the local executor both pass
    # the environment on)
    here = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent)] +
                                               [p for p in [os.environ.get("PYTHONPATH", "")] if p])
    ex = submitit.AutoExecutor(folder=out / "submitit", cluster=args.cluster)
    params: dict[str, Any] = {"timeout_min": args.timeout_min, "name": "nas_eval"}
    if ex.cluster == "slurm":
        params.update(slurm_array_parallelism=max(args.workers, 1), gpus_per_node=args.gpus_per_unit,
                      cpus_per_task=4, tasks_per_node=1, nodes=1)
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
    ex.update_parameters(**params)
    return ex


def _run_units(fn: Any, jobs: Sequence[tuple], workers: int, executor: Any = None) -> Iterator[tuple[int, Any]]:
    """``(k, fn(*jobs[k]))`` as each unit finishes: through a submitit ``executor`` (one job
    array), in a spawn process pool when ``workers > 1``, else in this process (so the caller
    records each one at once)."""
    if executor is not None and jobs:
        from submitit.helpers import as_completed as done_in_turn

        submitted = executor.map_array(fn, *zip(*jobs))
        index = {id(j): k for k, j in enumerate(submitted)}
        for j in done_in_turn(submitted):
            yield index[id(j)], j.result()
        return
    if workers <= 1:
        for k, job in enumerate(jobs):
            yield k, fn(*job)
        return
    with process_pool(workers) as pool:
        futures = {pool.submit(fn, *job): k for k, job in enumerate(jobs)}
        for f in as_completed(futures):
            yield futures[f], f.result()


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError
    from nas.search.searcher import STRATEGIES

    recipe = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.recipe:
        recipe = merge_recipe(recipe, args.recipe)
    for key in ("size", "public_size", "private_size"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                raise FerNasError(f"--{key} {getattr(args, key)}: must be at least 1")
            recipe[key] = getattr(args, key)
    if args.train_epochs:
        recipe["train"]["epochs"] = args.train_epochs
    if recipe["random_match"] not in RANDOM_MATCHES:
        raise FerNasError(f"--recipe {args.recipe}: random_match {recipe['random_match']!r}: choose from "
                          f"{', '.join(RANDOM_MATCHES)}")
    if args.data:
        recipe["data"] = str(Path(args.data).resolve())
    strategies = [x for x in (args.strategies if args.strategies is not None else
                              "darts" if args.quick else "sgas,darts,beta_darts,darts_minus").split(",")
                  if x and x != "none"]  # none: the random pool alone
    bad = [s for s in strategies if s not in STRATEGIES or s == "random"]
    if bad:
        raise FerNasError(f"--strategies: unknown or not a search: {', '.join(bad)} (choose from "
                          f"{', '.join(s for s in STRATEGIES if s != 'random')})")
    search_seeds = args.search_seeds or (1 if args.quick else 3)
    n_random = args.random if args.random is not None else (1 if args.quick else 30)
    train_seeds = args.train_seeds or (1 if args.quick else 2)
    refs = [r for r in (args.references if args.references is not None else
                        ("" if args.quick else ",".join(REFERENCES))).split(",") if r]
    out = Path(args.out)
    recipe.update(strategies=strategies, search_seeds=search_seeds, random=n_random, train_seeds=train_seeds,
                  references=refs)
    # units are found again by name (random_03, train seed 1): a folder holding another
    # protocol's units would silently mix them (other random cells under the same names)
    with FolderLock(out):
        return _protocol(args, out, recipe, strategies, search_seeds, n_random, train_seeds, refs)


def _protocol(args: argparse.Namespace, out: Path, recipe: dict[str, Any], strategies: list[str], search_seeds: int,
              n_random: int, train_seeds: int, refs: list[str]) -> dict[str, Any]:
    """The protocol's three steps in ``out`` (held by this process)."""
    from tqdm import tqdm

    from nas.models.genotypes import genotype_from_dict, genotype_to_dict, genotype_to_json, load_genotype
    from nas.models.ops import search_space
    from nas.runtime.checkpoint import json_safe
    from nas.search.random_cells import sample_matched

    # a fixed pool lets a folder grow (more strategies, seeds, cells): only the sizes are its protocol
    check_protocol(out, {k: v for k, v in recipe.items() if k not in GROWING}
                   if recipe["random_match"] == "space" else recipe)
    (out / "genotypes").mkdir(parents=True, exist_ok=True)
    executor = make_executor(args, out)
    threads = 1 if args.workers > 1 and executor is None else None
    t0 = time.time()

    # 1. searches (a fixed pool's median size, once: zero_cost's band and the random cells' match)
    space = search_space(recipe["space"])
    target = space_median_params(space, recipe) if recipe["random_match"] == "space" else None
    search_jobs = [(str(out), s, seed, recipe, args.device, threads, target)
                   for s in strategies for seed in range(search_seeds)]
    found: dict[int, Any] = {}
    if not args.summary_only:
        with tqdm(total=len(search_jobs), desc="nas_eval searches", unit="search") as bar:
            for k, res in _run_units(search_unit, search_jobs, args.workers, executor):
                found[k] = res
                bar.update(1)
    if args.summary_only or recipe["random_match"] == "space":  # a growing folder: every search it holds
        searched = [json.loads(p.read_text()) for p in sorted(out.glob("search-*/done.json"))]
    else:
        searched = [found[k] for k in range(len(search_jobs))]

    # 2. the genotypes to retrain: searched, random (parameter-matched), references
    genos: list[dict[str, Any]] = []
    for s in searched:
        genos.append({"name": f"{s['strategy']}_s{s['seed']}", "kind": "searched", "strategy": s["strategy"],
                      "search_seed": s["seed"], "genotype": s["genotype"]})
    sizes = {g["name"]: count_params_flops(genotype_from_dict(g["genotype"]), recipe) for g in genos}
    if n_random:
        if target is None:
            target = (int(np.mean([p for p, _ in sizes.values()])) if sizes
                      else count_params(load_genotype("DARTS_V2"), recipe))
        randoms = sample_matched(space, lambda g: count_params(g, recipe), target, n_random, tol=MATCH_TOL, seed=0)
        for k, g in enumerate(randoms):
            genos.append({"name": f"random_{k:02d}", "kind": "random", "strategy": "random", "search_seed": "",
                          "genotype": genotype_to_dict(g)})
    for r in refs:
        genos.append({"name": r, "kind": "reference", "strategy": "", "search_seed": "",
                      "genotype": genotype_to_dict(load_genotype(r))})
    for g in genos:
        path = out / "genotypes" / f"{g['name']}.json"
        atomic_write_text(genotype_to_json(genotype_from_dict(g["genotype"])), path)
        g["path"] = str(path)
        if g["name"] not in sizes:
            sizes[g["name"]] = count_params_flops(genotype_from_dict(g["genotype"]), recipe)

    # the one-shot proxies of every finished search, before the retraining: a supernet's checkpoint
    # stays in its run folder, which a session that ends mid-retraining may not keep
    has_random = any(g["kind"] == "random" for g in genos)
    proxies = read_rows(out / PROXY_CSV) if args.summary_only or not has_random else proxy_rows(out, searched, genos)

    # 3. retraining, one row per finished unit
    done = {(r["genotype"], int(r["train_seed"])) for r in read_rows(out / CSV_NAME)}
    jobs = [(g, seed) for g in genos for seed in range(train_seeds) if (g["name"], seed) not in done]
    if not args.summary_only and jobs:
        bar = tqdm(total=len(jobs), desc="nas_eval trainings", unit="run")
        units = [(str(out), g, seed, recipe, args.device, threads, sizes[g["name"]]) for g, seed in jobs]
        for _, row in _run_units(_train_row, units, args.workers, executor):
            _append(out / CSV_NAME, row)
            bar.update(1)
        bar.close()
    # a cell counts once each of its training seeds has finished (a pool read between sessions)
    rows, unfinished = finished_cells(read_rows(out / CSV_NAME), train_seeds)
    summary = summarize(rows, [{"strategy": g["strategy"], "genotype": g["genotype"]} for g in genos
                               if g["kind"] == "searched"], proxies)
    summary["unfinished"] = unfinished
    summary["searches"] = search_curves(out, searched)
    summary["protocol"] = recipe
    summary["wall_seconds_this_call"] = round(time.time() - t0, 1)
    summary["provenance"] = provenance({**vars(args), **recipe}, args.device)
    atomic_write_text(json.dumps(json_safe(summary), indent=2) + "\n", out / "summary.json")
    atomic_write_text(summary_markdown(summary), out / "summary.md")
    plot(summary, out / "nas_eval.png")
    plot_search_curves(summary["searches"], out / "nas_eval_searches.png")
    print(summary_markdown(summary))
    return summary


def _train_row(out: str, g: Mapping[str, Any], seed: int, recipe: Mapping[str, Any], device: str,
               threads: int | None, size: tuple[int, int]) -> dict[str, Any]:
    t0 = time.time()
    res = train_unit(out, g["name"], g["path"], seed, recipe, device, threads)
    return {"genotype": g["name"], "kind": g["kind"], "strategy": g["strategy"], "search_seed": g["search_seed"],
            "train_seed": seed, "params": size[0], "flops": size[1], "val_acc": res.get("val_acc"),
            "test_acc": res.get("test_acc"), "selected_epoch": res.get("selected_epoch"),
            "last_test_acc": res.get("last_test_acc"), "last_epoch": res.get("last_epoch"),
            "seconds": round(time.time() - t0, 1),
            **provenance_columns(provenance({**recipe, "genotype": g["name"], "train_seed": seed}, device))}


if __name__ == "__main__":
    cli_run(main, get_args_parser())
