"""Which relabelling rule cleans noisy labels? A grid measured against SynthFER's clean labels.

    python bench/relabel_grid.py [--out runs/relabel_grid] [--quick] [--workers 2]
                                 [--noise 0.1,0.2,0.3,0.4] [--modes uniform,ambiguous] [--seeds 3]
                                 [--rules control,autofernet,confident,consensus,soft,clean]
                                 [--size 3000] [--public_size 2000] [--private_size 3000]
                                 [--noise_splits train+val]

For every noise rate, noise mode and seed: SynthFER (``--synth_difficulty``, the v2 renderer;
Training is 80 % of ``--size``, PublicTest and PrivateTest ``--public_size`` and
``--private_size`` faces, each split with its own people) with that share of training labels
flipped, and of PublicTest labels too under ``--noise_splits train+val`` (PrivateTest stays
clean; data seed = seed), a ``cnn_shallow`` trained on
the noisy labels (``train_searched.py``, the *base*), then one relabelling run per rule, each
continued from the base's ``best.pt`` (the noisy-label model selected on PublicTest) with the
same recipe (``relabel_training.py``):

* ``control``: ``--no_relabel`` (continued training on the given labels);
* ``autofernet``: the reference rule, ``--rule autofernet --fes True`` (threshold 0.2);
* ``confident``: ``--rule confident --fes False --relabel_threshold 0.7`` (SCN's delta 0.2
  collapses to one class here, see docs/relabelling.md);
* ``consensus``: ``--rule consensus --fes False`` (delta 0.2, momentum 0.7, 2 epochs in a row);
* ``soft``: ``--rule soft --fes False`` (lambda 0.7, momentum 0.7);
* ``clean``: the ceiling, not a rule: continued training on the clean labels of the same
  images (SynthFER renders the faces from the clean labels, the flips are drawn after).

Each run has its own folder under ``--out``; one row per finished relabelling run goes to
``relabel_grid.csv`` (label changes restored / harmed against the clean labels, precision,
final recall and harm, final share of wrong training labels, the targets' mean mass on the
clean class, PublicTest and PrivateTest at the best-PublicTest epoch and at the last epoch,
the final training accuracy on the given labels, and the provenance columns of
:mod:`bench.common`). Interrupted, it continues: finished runs are read back from their
``results.json``, an interrupted one resumes from its ``last.pt``; a folder made with other
settings (``grid.json``) is refused with one line. More noise rates, modes, seeds or rules may
be added to a folder's grid later. ``summary.json`` / ``summary.md`` give per (mode, noise,
rule) the mean and 95 % t-interval over seeds, and the paired comparison with the control at
the selected and at the last epoch (:func:`nas.runtime.stats.paired`: interval, exact
sign-flip p, the smallest difference detectable at 80 % power); ``relabel_grid.png`` plots
PrivateTest against the noise rate, one line per rule. ``summary.md`` ends with what to run
at each noise rate (:func:`recommend`: chosen by the noisy PublicTest, never by PrivateTest, and
recommended over the plain run only where the paired interval is above 0) and issue 33's
targets for the method chosen at 30 %.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas.runtime.checkpoint import atomic_write_text
from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import FolderLock, check_protocol, num as _num, process_pool, provenance, provenance_columns, \
        PROVENANCE_COLUMNS, read_rows, run_or_resume
else:
    from bench.common import FolderLock, check_protocol, num as _num, process_pool, provenance, provenance_columns, \
        PROVENANCE_COLUMNS, read_rows, run_or_resume

RULE_FLAGS: dict[str, list[str]] = {
    "control": ["--no_relabel"],
    "autofernet": ["--rule", "autofernet", "--fes", "True"],
    # SCN's delta 0.2 collapses here: the step's own confident predictions become its targets and
    # within one epoch every face is "neutral" (measured, docs/relabelling.md); 0.7 (the rule's default) does not
    "confident": ["--rule", "confident", "--fes", "False", "--relabel_threshold", "0.7"],
    "consensus": ["--rule", "consensus", "--fes", "False"],
    "soft": ["--rule", "soft", "--fes", "False", "--soft_lambda", "0.7"],
    # the ceiling, not a rule: the same images continued on their clean labels
    "clean": ["--no_relabel"],
    # training methods that never change a label (nas.engine.robust), and a rule with one
    "eac": ["--no_relabel", "--robust", "eac"],
    "smallloss": ["--no_relabel", "--robust", "smallloss"],
    "confident+eac": ["--rule", "confident", "--fes", "False", "--relabel_threshold", "0.7", "--robust", "eac"],
    "confident+smallloss": ["--rule", "confident", "--fes", "False", "--relabel_threshold", "0.7", "--robust",
                            "smallloss"],
}
#: the rules the grid runs when --rules is not given (the methods are asked for by name)
DEFAULT_RULES = ("control", "autofernet", "confident", "consensus", "soft", "clean")
COLUMNS = ["mode", "noise", "seed", "rule", "changed", "restored", "harmed", "precision", "recall", "harm",
           "label_noise", "clean_mass", "val_acc", "test_acc", "selected_epoch", "last_val_acc", "last_test_acc",
           "last_epoch", "train_acc", "base_test_acc", "base_last_test_acc", "seconds", *PROVENANCE_COLUMNS]
METRICS = ["test_acc", "last_test_acc", "val_acc", "last_val_acc", "train_acc", "restored", "harmed", "precision", "recall", "harm",
           "label_noise", "clean_mass"]
CSV_NAME = "relabel_grid.csv"

# the settings of every run in a grid folder (grid.json; a folder holds one); the noise rates,
# modes, seeds and rules are what to run in it and may grow
FULL = {"arch": "cnn_shallow", "size": 3000, "public_size": 2000, "private_size": 3000, "noise_splits": "train+val",
        "difficulty": 1.0, "base_epochs": 20, "relabel_epochs": 12, "batch_size": 32, "learning_rate": 0.01,
        "optimizer": "sgd", "weight_decay": 3e-4, "augment": "default"}
QUICK = {"arch": "cnn_shallow", "size": 600, "public_size": 200, "private_size": 200, "noise_splits": "train+val",
         "difficulty": 1.0, "base_epochs": 3, "relabel_epochs": 3, "batch_size": 32, "learning_rate": 0.01,
         "optimizer": "sgd", "weight_decay": 3e-4, "augment": "default"}
RECIPE_FLAGS = ("size", "public_size", "private_size", "noise_splits", "difficulty", "arch", "base_epochs",
                "relabel_epochs", "batch_size", "learning_rate", "optimizer", "weight_decay", "augment")


def get_args_parser() -> ArgumentParser:
    from nas.runtime.cli import float_list

    p = ArgumentParser(prog="bench/relabel_grid.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/relabel_grid", help="folder of the runs, the CSV, the summary and PNG")
    p.add_argument("--quick", action="store_true", help="a few minutes: 600 images, 3+3 epochs, 1 seed, 30 %% uniform")
    p.add_argument("--noise", type=float_list, default=None, help="noise rates (default 0.1,0.2,0.3,0.4)")
    p.add_argument("--modes", default=None, help="noise modes, comma-separated (default uniform,ambiguous)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    p.add_argument("--rules", default=",".join(DEFAULT_RULES),
                   help=f"rules and methods, comma-separated, from {', '.join(RULE_FLAGS)}")
    p.add_argument("--size", type=int, default=None,
                   help=f"SynthFER images; Training is 80 %% of them (default {FULL['size']})")
    p.add_argument("--public_size", type=int, default=None,
                   help=f"SynthFER PublicTest faces (default {FULL['public_size']})")
    p.add_argument("--private_size", type=int, default=None,
                   help=f"SynthFER PrivateTest faces (default {FULL['private_size']})")
    p.add_argument("--noise_splits", default=None, choices=("train", "train+val"),
                   help=f"splits with flipped labels: train (a clean PublicTest selects) or train+val (PublicTest "
                        f"as noisy as Training, as on FER2013; default {FULL['noise_splits']})")
    p.add_argument("--difficulty", type=float, default=None,
                   help=f"SynthFER difficulty (default {FULL['difficulty']})")
    p.add_argument("--arch", default=None, help=f"the network (default {FULL['arch']})")
    p.add_argument("--batch_size", type=int, default=None, help=f"batch size (default {FULL['batch_size']})")
    p.add_argument("--learning_rate", type=float, default=None,
                   help=f"learning rate (default {FULL['learning_rate']})")
    p.add_argument("--optimizer", default=None, choices=("sgd", "nesterov", "adam"),
                   help=f"optimizer (default {FULL['optimizer']})")
    p.add_argument("--weight_decay", type=float, default=None, help=f"weight decay (default {FULL['weight_decay']})")
    p.add_argument("--augment", default=None, choices=("default", "light"),
                   help=f"training augmentation (default {FULL['augment']})")
    p.add_argument("--base_epochs", type=int, default=None,
                   help=f"epochs of the noisy-label base (default {FULL['base_epochs']})")
    p.add_argument("--relabel_epochs", type=int, default=None,
                   help=f"epochs of each continued run (default {FULL['relabel_epochs']})")
    p.add_argument("--workers", type=int, default=1, help="processes training at once (one thread each when > 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--summary_only", action="store_true", help="rebuild summary and PNG from the CSV")
    return p


# ----------------------------------------------------------------------------- one unit of work
def run_cell(out: str, mode: str, noise: float, seed: int, rules: Sequence[str], recipe: Mapping[str, Any],
             device: str, threads: int | None) -> list[dict[str, Any]]:
    """The base run and one relabelling run per rule for one (mode, noise, seed). Each finished
    rule's row is appended to the CSV at once (under a lock: workers share the file), so a grid
    stopped mid-cell keeps what it finished; rules already in the CSV are skipped. Returns the
    rows this call added."""
    import torch

    from nas.apps import relabel as relabel_app, train as train_app

    if threads:
        torch.set_num_threads(threads)
    prov = provenance_columns(provenance({**recipe, "mode": mode, "noise": noise, "seed": seed}, device))

    def data(flipped: float) -> list[str]:
        return ["--dataset", "synthfer", "--synth_renderer", "v2", "--synth_size", str(recipe["size"]),
                "--synth_public_size", str(recipe["public_size"]), "--synth_private_size",
                str(recipe["private_size"]), "--synth_noise", str(flipped), "--synth_noise_mode", mode,
                "--synth_noise_splits", recipe["noise_splits"], "--synth_difficulty", str(recipe["difficulty"]),
                "--data_seed", str(seed)]

    common = ["--batch_size", str(recipe["batch_size"]), "--learning_rate", str(recipe["learning_rate"]),
              "--optimizer", recipe["optimizer"], "--weight_decay", str(recipe["weight_decay"]),
              "--augment", recipe["augment"], "--seed", str(seed), "--device", device,
              "--test_curve", "False"]  # the rows need PrivateTest at the selected and last epochs only
    cell = Path(out) / f"{mode}-n{round(noise * 100):02d}-s{seed}"
    base = run_or_resume(train_app, cell / "base", ["--arch", recipe["arch"], "--epochs", str(recipe["base_epochs"]),
                                                       "--snapshot_at", "", *data(noise), *common])
    rows = []
    have = {r["rule"] for r in read_rows(Path(out) / CSV_NAME)
            if (r["mode"], float(r["noise"]), int(r["seed"])) == (mode, float(noise), int(seed))}
    for rule in rules:
        if rule in have:
            continue
        t0 = time.time()
        flipped = 0.0 if rule == "clean" else noise
        res = run_or_resume(relabel_app, cell / rule, ["--checkpoint", str(cell / "base" / "best.pt"),
                                                          "--epochs", str(recipe["relabel_epochs"]), *data(flipped),
                                                          *common, *RULE_FLAGS[rule]])
        rel = res.get("relabel") or {}
        rows.append({"mode": mode, "noise": noise, "seed": seed, "rule": rule, "changed": rel.get("changed", 0),
                     "restored": rel.get("restored", 0), "harmed": rel.get("harmed", 0),
                     "precision": rel.get("precision"), "recall": rel.get("last_recall"),
                     "harm": rel.get("last_harm"), "label_noise": rel.get("last_label_noise"),
                     "clean_mass": rel.get("last_clean_mass"), "val_acc": res.get("val_acc"),
                     "test_acc": res.get("test_acc"), "selected_epoch": res.get("selected_epoch"),
                     "last_val_acc": res.get("last_val_acc"), "last_test_acc": res.get("last_test_acc"),
                     "last_epoch": res.get("last_epoch"), "train_acc": res.get("final_train_acc"),
                     "base_test_acc": base.get("test_acc"), "base_last_test_acc": base.get("last_test_acc"),
                     "seconds": round(time.time() - t0, 1), **prov})
        _append_rows(Path(out) / CSV_NAME, rows[-1:])
    return rows


# ----------------------------------------------------------------------------- the report
def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, noise, rule): mean and 95 % half-width over seeds of each metric, and the
    paired comparison of PrivateTest with the control's on the same seeds, at the selected
    epoch (``vs_control``) and at the last one (``vs_control_last``)."""
    from nas.runtime.stats import paired, t_interval

    by_seed = {(r["mode"], float(r["noise"]), int(r["seed"]), r["rule"]): r for r in rows}
    groups: dict[tuple[str, float, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mode"], float(r["noise"]), r["rule"]), []).append(r)
    order = list(RULE_FLAGS)
    out = []
    for (mode, noise, rule), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                         order.index(kv[0][2]) if kv[0][2] in order
                                                                         else len(order))):
        entry: dict[str, Any] = {"mode": mode, "noise": noise, "rule": rule, "seeds": len(rs)}
        for m in METRICS:
            vals = [x for x in (_num(r.get(m)) for r in rs) if x is not None]
            if vals:
                entry[m], entry[m + "_ci"] = t_interval(vals)
        if rule != "control":
            for key, col in (("vs_control", "test_acc"), ("vs_control_last", "last_test_acc")):
                pairs = [(_num(r.get(col)), _num((by_seed.get((mode, noise, int(r["seed"]), "control")) or {}).get(col)))
                         for r in rs]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if pairs:
                    c = paired([a for a, _ in pairs], [b for _, b in pairs])
                    entry[key], entry[key + "_ci"] = c.diff, c.half_width
                    entry[key + "_stats"] = c.as_dict()
        out.append(entry)
    # the share of the noise's harm a method wins back: (method - control) / (clean - control),
    # on the 3-seed means at the last epoch and at the selected one
    means = {(e["mode"], e["noise"], e["rule"]): e for e in out}
    for e in out:
        c, k = means.get((e["mode"], e["noise"], "control")), means.get((e["mode"], e["noise"], "clean"))
        if e["rule"] in ("control", "clean") or c is None or k is None:
            continue
        for key, col in (("won_back", "test_acc"), ("won_back_last", "last_test_acc")):
            gap = k.get(col, float("nan")) - c.get(col, float("nan"))
            if col in e and gap > 0:
                e[key] = (e[col] - c[col]) / gap
    return out


def full_seeds(summary: Sequence[Mapping[str, Any]], seeds: int | None = None) -> int:
    """The seeds a cell needs to count as complete: ``seeds`` (the grid's ``--seeds``), else the
    most any arm has."""
    return int(seeds) if seeds else max((int(e["seeds"]) for e in summary), default=0)


def recommend(summary: Sequence[Mapping[str, Any]], seeds: int | None = None) -> dict[str, Any]:
    """What to run at each noise rate, and issue 33's targets for that choice.

    The choice never looks at PrivateTest: at each noise rate the method (any arm but the
    control and the clean ceiling, which a user does not have) with the highest mean best
    PublicTest over that rate's modes and seeds, PublicTest being as noisy as Training here,
    as a user's would be. It is recommended over the plain run only where its last-epoch
    PrivateTest beats the control's with a paired 95 % interval above 0 in every mode of that
    rate; else the recommendation is the plain run (``none``). Only complete modes count (every
    arm there, each with the grid's seeds, :func:`full_seeds`: a mode that every arm has reached
    on one seed so far has no interval to gate with, and means over other seeds do not compare);
    the rest are listed as pending, and a rate with no complete mode is pending. The targets are then read on
    PrivateTest for the method chosen at 30 %: in each 30 % uniform / ambiguous cell it wins back
    at least half of the clean-minus-control gap and gains at least 5 points at the last epoch,
    the interval excluding 0; at 0 and 10 % it loses at most 0.5 points (3-seed mean)."""
    rates = sorted({e["noise"] for e in summary})
    full = full_seeds(summary, seeds)
    picks: dict[str, Any] = {}
    for rate in rates:
        cells = [e for e in summary if e["noise"] == rate and "val_acc" in e]
        rules = {e["rule"] for e in cells if e["rule"] not in ("control", "clean")}
        if not rules:
            continue
        def complete(mode: str) -> bool:
            # a mode counts once every arm of the rate is there, each (the control too) with the
            # grid's seeds
            es = {e["rule"]: e for e in cells if e["mode"] == mode and e["rule"] != "clean"}
            return set(es) - {"control"} == rules and all(e["seeds"] >= full for e in es.values())

        modes = sorted({e["mode"] for e in cells})
        done = [m for m in modes if complete(m)]
        waiting = [m for m in modes if m not in done]
        key = f"{round(rate * 100)}"
        if not done:
            picks[key] = {"noise": rate, "modes": modes, "best_by_public_test": None, "recommended": "pending",
                          "pending_modes": waiting}
            continue
        by_rule = {r: [e for m in done for e in cells if e["mode"] == m and e["rule"] == r] for r in sorted(rules)}
        best = max(by_rule, key=lambda r: sum(e["val_acc"] for e in by_rule[r]) / len(by_rule[r]))
        es = by_rule[best]
        wins = all(e.get("vs_control_last", float("nan")) - e.get("vs_control_last_ci", float("nan")) > 0 for e in es)
        picks[key] = {
            "noise": rate, "modes": done, "pending_modes": waiting, "best_by_public_test": best,
            "public_test": sum(e["val_acc"] for e in es) / len(es),
            "recommended": best if wins else "none",
            "cells": [{k: e.get(k) for k in ("mode", "seeds", "test_acc", "last_test_acc", "vs_control_last",
                                            "vs_control_last_ci", "won_back_last")} for e in es]}
    targets: dict[str, Any] = {}
    method = (picks.get("30") or {}).get("best_by_public_test")
    if method:
        targets["method"] = method
        get = {(e["mode"], e["noise"], e["rule"]): e for e in summary}
        for mode in ("uniform", "ambiguous"):
            e = get.get((mode, 0.3, method))
            if e and "vs_control_last" in e and "won_back_last" in e:
                d, hw = e["vs_control_last"], e["vs_control_last_ci"]
                targets[f"{mode} 30 %"] = {"won_back": e["won_back_last"], "gain": d, "gain_ci": hw, "seeds": e["seeds"],
                                         "met": bool(e["won_back_last"] >= 0.5 and d >= 5 and d - hw > 0)}
        for rate in (0.0, 0.1):
            for mode in sorted({e["mode"] for e in summary if e["noise"] == rate}):
                e = get.get((mode, rate, method))
                if e and "vs_control_last" in e:
                    targets[f"{mode} {round(rate * 100)} %"] = {
                        "gain": e["vs_control_last"], "gain_ci": e["vs_control_last_ci"], "seeds": e["seeds"],
                        "met": bool(e["vs_control_last"] >= -0.5)}
    return {"by_noise": picks, "targets": targets}


def recommend_markdown(rec: Mapping[str, Any]) -> str:
    lines = ["## What to run, by suspected noise rate", "",
             "Chosen by the noisy PublicTest (never by PrivateTest): the method with the best mean PublicTest at "
             "that rate; recommended over the plain run only if its last-epoch PrivateTest beats the control's "
             "with the paired 95 % interval above 0 in every mode. Only the modes where every arm has every "
             "seed count; the others are listed as pending.", "",
             "| noise | modes | best by PublicTest | PrivateTest %, last epoch | vs control, last | won back | "
             "recommended |", "|---|---|---|---|---|---|---|"]
    for k, p in rec["by_noise"].items():
        if p["recommended"] == "pending":
            lines.append(f"| {k} % | {' / '.join(p['modes'])} | – | – | – | – | pending: no mode has every arm "
                         "with every seed |")
            continue
        cells = p["cells"]

        def each(key: str, f: Any) -> str:  # one figure per mode, in the order of the modes
            return " / ".join("–" if c.get(key) is None else f(c) for c in cells)

        last = each("last_test_acc", lambda c: f"{c['last_test_acc']:.2f}")
        diff = each("vs_control_last", lambda c: _pm(c, "vs_control_last", signed=True))
        won = each("won_back_last", lambda c: f"{100 * c['won_back_last']:.0f} %")
        later = f" ({', '.join(p['pending_modes'])} pending)" if p.get("pending_modes") else ""
        lines.append(f"| {k} % | {' / '.join(p['modes'])}{later} | {p['best_by_public_test']} | {last} | {diff} | "
                     f"{won} | **{p['recommended']}** |")
    t = rec["targets"]
    if t:
        lines += ["", f"## Issue 33's targets, for the method chosen at 30 % ({t['method']})", "",
                  "| cell | target | measured | met |", "|---|---|---|---|"]
        for k, v in t.items():
            if k == "method":
                continue
            if "won_back" in v:
                what = "won back ≥ 50 % and ≥ +5 points, interval above 0"
                got = f"{100 * v['won_back']:.0f} %, {_pm(v, 'gain', signed=True)} ({_seeds(v['seeds'])})"
            else:
                what = "loses ≤ 0.5 points"
                got = f"{_pm(v, 'gain', signed=True)} ({_seeds(v['seeds'])})"
            met = "yes" if v["met"] else "no"
            if v["seeds"] < 3:
                met += f" so far ({v['seeds']} of 3 seeds)"
            lines.append(f"| {k} | {what} | {got} | {met} |")
    return "\n".join(lines) + "\n"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _pm(entry: Mapping[str, Any], key: str, digits: int = 2, signed: bool = False) -> str:
    if key not in entry:
        return "–"
    v, ci = entry[key], entry.get(key + "_ci", float("nan"))
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return s if ci is None or math.isnan(ci) else f"{s} ± {ci:.{digits}f}"  # None: JSON's nan


def _p_mde(entry: Mapping[str, Any], key: str) -> str:
    st = entry.get(key + "_stats")
    if not st:
        return "–"
    mde = st["mde"]
    return f"{st['p']:.2g} / {'–' if mde is None or math.isnan(mde) else f'{mde:.2f}'}"


def _won(entry: Mapping[str, Any]) -> str:
    return "–" if "won_back_last" not in entry else f"{100 * entry['won_back_last']:.0f} %"


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| noise mode | noise | rule | seeds | PrivateTest %, selected | vs control | p / detectable | "
             "PrivateTest %, last epoch | vs control, last | p / detectable, last | won back, last | train acc % | "
             "restored | harmed | restored/harmed | final wrong labels % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        ratio = "–"
        if e["rule"] != "control" and e.get("harmed"):  # noqa: SIM114
            ratio = f"{e['restored'] / e['harmed']:.2f}"
        elif e["rule"] != "control" and e.get("restored"):
            ratio = "∞"
        lines.append(f"| {e['mode']} | {round(e['noise'] * 100)} % | {e['rule']} | {e['seeds']} | "
                     f"{_pm(e, 'test_acc')} | {_pm(e, 'vs_control', signed=True)} | {_p_mde(e, 'vs_control')} | "
                     f"{_pm(e, 'last_test_acc')} | {_pm(e, 'vs_control_last', signed=True)} | "
                     f"{_p_mde(e, 'vs_control_last')} | "
                     f"{_won(e)} | "
                     f"{_pm(e, 'train_acc', 1)} | {_pm(e, 'restored', 0)} | "
                     f"{_pm(e, 'harmed', 0)} | {ratio} | {_pm(e, 'label_noise', 1)} |")
    lines.append("")
    lines.append("± : 95 % t-interval over seeds; vs control: paired difference in points (same seeds and data); "
                 "p: exact sign-flip test, two-sided (with 3 seeds it cannot go below 0.25: the t-interval is what can "
                 "exclude 0); detectable: the smallest difference a paired t-test would find with 80 % power at these "
                 "seeds' spread; won back: (method - control) / (clean - control) of the means at the last epoch.")
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[Mapping[str, Any]], path: Path, seeds: int | None = None) -> Path | None:
    """PrivateTest against the noise rate, a column per noise mode, a line per rule (95 % bars);
    the top row at the best-PublicTest epoch, the bottom row at the last epoch. Only arms with the
    grid's seeds (:func:`full_seeds`) are drawn: a cell still running shows when it is done."""
    from nas.engine.report import have_matplotlib, save_figure

    full = full_seeds(summary, seeds)
    summary = [e for e in summary if e["seeds"] >= full]
    if not summary or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    modes = sorted({e["mode"] for e in summary})
    rules = list(dict.fromkeys([*RULE_FLAGS, *(e["rule"] for e in summary)]))
    fig, axes = plt.subplots(2, len(modes), figsize=(5.5 * len(modes), 8.0), squeeze=False)
    # one colour per arm and one noise axis in every panel, so that panels compare at a glance
    # (a mode with one rate so far would otherwise span a few tenths of a point)
    colours = {r: plt.get_cmap("tab10")(k % 10) for k, r in enumerate(r for r in rules if r != "control")}
    colours["control"] = "black"
    rates = [100 * e["noise"] for e in summary]
    lo, hi = min(rates) - 3, max(rates) + 3
    for row, (key, what) in enumerate((("test_acc", "at the best-PublicTest epoch"),
                                       ("last_test_acc", "at the last epoch"))):
        for ax, mode in zip(axes[row], modes):
            for k, rule in enumerate(rules):
                es = [e for e in summary if e["mode"] == mode and e["rule"] == rule and key in e]
                if not es:
                    continue
                x = [100 * e["noise"] + (k - len(rules) / 2) * 0.3 for e in es]
                y = [e[key] for e in es]
                err = [0 if math.isnan(e.get(key + "_ci", float("nan"))) else e[key + "_ci"] for e in es]
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=rule, color=colours[rule],
                            ls="--" if rule == "control" else "-")
            ax.set_xlim(lo, hi)
            ax.set_xlabel("training labels flipped (%)")
            ax.set_ylabel(f"clean PrivateTest % {what}")
            ax.set_title(f"noise mode: {mode}")
            ax.grid(alpha=0.3)
    # one legend for every panel, beside them: inside, ten methods hide the points
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.83, 0.5), fontsize=9, title="arm")
    return save_figure(fig, path)


def _append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows (the header first when the file is new), holding an exclusive lock: the pool's
    workers append to the same file."""
    import fcntl

    with path.open("a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if f.tell() == 0:
                w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_report(out: Path, recipe: Mapping[str, Any], args: argparse.Namespace | None = None) -> dict[str, Any]:
    from nas.runtime.checkpoint import json_safe

    rows = read_rows(out / CSV_NAME)
    summary = summarize(rows)
    result = {"recipe": dict(recipe), "runs": len(rows), "summary": summary,
              "provenance": provenance({**vars(args or argparse.Namespace()), **recipe},
                                       getattr(args, "device", None))}
    result["recommendation"] = recommend(summary, recipe.get("seeds"))
    atomic_write_text(json.dumps(json_safe(result), indent=2) + "\n", out / "summary.json")
    atomic_write_text(summary_markdown(summary) + "\n" + recommend_markdown(result["recommendation"]),
                      out / "summary.md")
    plot(summary, out / "relabel_grid.png", recipe.get("seeds"))
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError

    recipe = dict(QUICK if args.quick else FULL)
    for key in RECIPE_FLAGS:
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    for key in ("size", "public_size", "private_size", "base_epochs", "relabel_epochs"):
        if int(recipe[key]) < 1:
            raise FerNasError(f"--{key} {recipe[key]}: must be at least 1")
    noise = args.noise or ([0.3] if args.quick else [0.1, 0.2, 0.3, 0.4])
    modes = (args.modes or ("uniform" if args.quick else "uniform,ambiguous")).split(",")
    seeds = args.seeds or (1 if args.quick else 3)
    rules = [r for r in args.rules.split(",") if r]
    for r in rules:
        if r not in RULE_FLAGS:
            raise FerNasError(f"--rules: unknown rule {r!r}; choose from {', '.join(RULE_FLAGS)}")
    if "control" not in rules:
        rules.insert(0, "control")  # every comparison is against it
    if any(not 0.0 <= n <= 1.0 for n in noise):
        raise FerNasError(f"--noise {','.join(map(str, noise))}: rates must be fractions between 0 and 1")
    if seeds < 1:
        raise FerNasError(f"--seeds {seeds}: must be at least 1")
    from nas.data.synthfer import NOISE_MODES

    for m in modes:
        if m not in NOISE_MODES:
            raise FerNasError(f"--modes: unknown noise mode {m!r}; choose from {', '.join(NOISE_MODES)}")
    out = Path(args.out)
    if out.exists() and not (out / "grid.json").exists() and any(out.iterdir()):
        raise FerNasError(f"{out}: holds files but no grid.json; choose another --out")
    with FolderLock(out):
        return _main(args, out, recipe, noise, modes, seeds, rules)


def _main(args: argparse.Namespace, out: Path, recipe: dict[str, Any], noise: list[float], modes: list[str],
          seeds: int, rules: list[str]) -> dict[str, Any]:
    # every run in the folder was made with these settings (grid.json); the lists may grow
    check_protocol(out, recipe, "grid.json")
    recipe.update(noise=noise, modes=modes, seeds=seeds, rules=rules)
    if not args.summary_only:
        done = {(r["mode"], float(r["noise"]), int(r["seed"]), r["rule"]) for r in read_rows(out / CSV_NAME)}
        cells = [(m, n, s) for m in modes for n in noise for s in range(seeds)
                 if any((m, float(n), s, r) not in done for r in rules)]
        from tqdm import tqdm

        bar = tqdm(total=len(cells), desc="relabel grid", unit="cell")
        threads = 1 if args.workers > 1 else None

        def record(rows: list[dict[str, Any]]) -> None:  # the worker wrote its rows as it went
            bar.update(1)

        if args.workers > 1:
            with process_pool(args.workers) as pool:
                futures = [pool.submit(run_cell, str(out), m, n, s, rules, recipe, args.device, threads)
                           for m, n, s in cells]
                for f in as_completed(futures):
                    record(f.result())
        else:
            for m, n, s in cells:
                record(run_cell(str(out), m, n, s, rules, recipe, args.device, threads))
        bar.close()
    result = write_report(out, recipe, args)
    print(summary_markdown(result["summary"]))
    return result


if __name__ == "__main__":
    cli_run(main, get_args_parser())
