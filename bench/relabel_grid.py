"""Which relabelling rule cleans noisy labels? A grid measured against SynthFER's clean labels.

    python bench/relabel_grid.py [--out runs/relabel_grid] [--quick] [--workers 2]
                                 [--noise 0.1,0.2,0.3,0.4] [--modes uniform,ambiguous] [--seeds 3]
                                 [--rules control,autofernet,confident,consensus,soft,clean]

For every noise rate, noise mode and seed: SynthFER (``--synth_difficulty``, the v2 renderer)
with that share of training labels flipped (data seed = seed), a ``cnn_shallow`` trained on
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
clean class, PublicTest and PrivateTest at the best-PublicTest epoch). Interrupted, it
continues: finished runs are read back from their ``results.json``, an interrupted one
resumes from its ``last.pt``. ``summary.json`` / ``summary.md`` give per (mode, noise, rule)
the mean and 95 % t-interval over seeds and the paired difference to the control;
``relabel_grid.png`` plots PrivateTest against the noise rate, one line per rule.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas.runtime.checkpoint import atomic_write_text
from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import num as _num, read_rows, run_or_resume, t_interval
else:
    from bench.common import num as _num, read_rows, run_or_resume, t_interval

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
}
COLUMNS = ["mode", "noise", "seed", "rule", "changed", "restored", "harmed", "precision", "recall", "harm",
           "label_noise", "clean_mass", "val_acc", "test_acc", "selected_epoch", "base_test_acc", "seconds"]
METRICS = ["test_acc", "restored", "harmed", "precision", "recall", "harm", "label_noise", "clean_mass"]
CSV_NAME = "relabel_grid.csv"

FULL = {"arch": "cnn_shallow", "size": 3000, "difficulty": 1.0, "base_epochs": 20, "relabel_epochs": 12,
        "batch_size": 32,
        "learning_rate": 0.01}
QUICK = {"arch": "cnn_shallow", "size": 600, "difficulty": 1.0, "base_epochs": 3, "relabel_epochs": 3, "batch_size": 32,
         "learning_rate": 0.01}


def get_args_parser() -> ArgumentParser:
    from nas.runtime.cli import float_list

    p = ArgumentParser(prog="bench/relabel_grid.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/relabel_grid", help="folder of the runs, the CSV, the summary and PNG")
    p.add_argument("--quick", action="store_true", help="a few minutes: 600 images, 3+3 epochs, 1 seed, 30 %% uniform")
    p.add_argument("--noise", type=float_list, default=None, help="noise rates (default 0.1,0.2,0.3,0.4)")
    p.add_argument("--modes", default=None, help="noise modes, comma-separated (default uniform,ambiguous)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    p.add_argument("--rules", default=",".join(RULE_FLAGS), help="rules, comma-separated")
    p.add_argument("--size", type=int, default=None, help=f"SynthFER images (default {FULL['size']})")
    p.add_argument("--difficulty", type=float, default=None,
                   help=f"SynthFER difficulty (default {FULL['difficulty']})")
    p.add_argument("--arch", default=None, help=f"the network (default {FULL['arch']})")
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
    """The base run and one relabelling run per rule for one (mode, noise, seed); rows of the CSV."""
    import torch

    from nas.apps import relabel as relabel_app, train as train_app

    if threads:
        torch.set_num_threads(threads)

    def data(flipped: float) -> list[str]:
        return ["--dataset", "synthfer", "--synth_renderer", "v2", "--synth_size", str(recipe["size"]),
                "--synth_noise", str(flipped), "--synth_noise_mode", mode,
                "--synth_difficulty", str(recipe["difficulty"]), "--data_seed", str(seed)]

    common = ["--batch_size", str(recipe["batch_size"]), "--learning_rate", str(recipe["learning_rate"]),
              "--seed", str(seed), "--device", device]
    cell = Path(out) / f"{mode}-n{round(noise * 100):02d}-s{seed}"
    base = run_or_resume(train_app, cell / "base", ["--arch", recipe["arch"], "--epochs", str(recipe["base_epochs"]),
                                                       "--snapshot_at", "", *data(noise), *common])
    rows = []
    for rule in rules:
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
                     "base_test_acc": base.get("test_acc"), "seconds": round(time.time() - t0, 1)})
    return rows


# ----------------------------------------------------------------------------- the report
def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, noise, rule): mean and 95 % half-width over seeds of each metric, and of
    PrivateTest minus the control's on the same seed (the paired difference)."""
    control = {(r["mode"], float(r["noise"]), int(r["seed"])): _num(r["test_acc"]) for r in rows
               if r["rule"] == "control"}
    groups: dict[tuple[str, float, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mode"], float(r["noise"]), r["rule"]), []).append(r)
    out = []
    for (mode, noise, rule), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                         list(RULE_FLAGS).index(kv[0][2]))):
        entry: dict[str, Any] = {"mode": mode, "noise": noise, "rule": rule, "seeds": len(rs)}
        for m in METRICS:
            vals = [x for x in (_num(r.get(m)) for r in rs) if x is not None]
            if vals:
                entry[m], entry[m + "_ci"] = t_interval(vals)
        diffs = [_num(r["test_acc"]) - control[(mode, noise, int(r["seed"]))] for r in rs
                 if control.get((mode, noise, int(r["seed"]))) is not None and _num(r["test_acc"]) is not None]
        if diffs and rule != "control":
            entry["vs_control"], entry["vs_control_ci"] = t_interval(diffs)
        out.append(entry)
    return out


def _pm(entry: Mapping[str, Any], key: str, digits: int = 2, signed: bool = False) -> str:
    if key not in entry:
        return "–"
    v, ci = entry[key], entry.get(key + "_ci", float("nan"))
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return s if math.isnan(ci) else f"{s} ± {ci:.{digits}f}"


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| noise mode | noise | rule | seeds | PrivateTest % | vs control (points) | restored | harmed | "
             "restored/harmed | final wrong labels % | clean mass % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        ratio = "–"
        if e["rule"] != "control" and e.get("harmed"):
            ratio = f"{e['restored'] / e['harmed']:.2f}"
        elif e["rule"] != "control" and e.get("restored"):
            ratio = "∞"
        lines.append(f"| {e['mode']} | {round(e['noise'] * 100)} % | {e['rule']} | {e['seeds']} | "
                     f"{_pm(e, 'test_acc')} | {_pm(e, 'vs_control', signed=True)} | {_pm(e, 'restored', 0)} | "
                     f"{_pm(e, 'harmed', 0)} | {ratio} | {_pm(e, 'label_noise', 1)} | {_pm(e, 'clean_mass', 1)} |")
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """PrivateTest against the noise rate, a panel per noise mode, a line per rule (95 % bars)."""
    from nas.engine.report import have_matplotlib, save_figure

    if not summary or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    modes = sorted({e["mode"] for e in summary})
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for k, rule in enumerate(RULE_FLAGS):
            es = [e for e in summary if e["mode"] == mode and e["rule"] == rule and "test_acc" in e]
            if not es:
                continue
            x = [100 * e["noise"] + (k - 2) * 0.4 for e in es]
            y = [e["test_acc"] for e in es]
            err = [0 if math.isnan(e.get("test_acc_ci", float("nan"))) else e["test_acc_ci"] for e in es]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=rule,
                        color="black" if rule == "control" else None, ls="--" if rule == "control" else "-")
        ax.set_xlabel("training labels flipped (%)")
        ax.set_ylabel("PrivateTest accuracy at the best-PublicTest epoch (%)")
        ax.set_title(f"noise mode: {mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        f.flush()


def write_report(out: Path, recipe: Mapping[str, Any]) -> dict[str, Any]:
    rows = read_rows(out / CSV_NAME)
    summary = summarize(rows)
    result = {"recipe": dict(recipe), "runs": len(rows), "summary": summary}
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / "summary.json")
    atomic_write_text(summary_markdown(summary), out / "summary.md")
    plot(summary, out / "relabel_grid.png")
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError

    recipe = dict(QUICK if args.quick else FULL)
    for key in ("size", "difficulty", "arch", "base_epochs", "relabel_epochs"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    noise = args.noise or ([0.3] if args.quick else [0.1, 0.2, 0.3, 0.4])
    modes = (args.modes or ("uniform" if args.quick else "uniform,ambiguous")).split(",")
    seeds = args.seeds or (1 if args.quick else 3)
    rules = [r for r in args.rules.split(",") if r]
    for r in rules:
        if r not in RULE_FLAGS:
            raise FerNasError(f"--rules: unknown rule {r!r}; choose from {', '.join(RULE_FLAGS)}")
    if "control" not in rules:
        rules.insert(0, "control")  # every comparison is against it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe.update(noise=noise, modes=modes, seeds=seeds, rules=rules)
    atomic_write_text(json.dumps(recipe, indent=2) + "\n", out / "grid.json")
    if not args.summary_only:
        done = {(r["mode"], float(r["noise"]), int(r["seed"]), r["rule"]) for r in read_rows(out / CSV_NAME)}
        cells = [(m, n, s) for m in modes for n in noise for s in range(seeds)
                 if any((m, float(n), s, r) not in done for r in rules)]
        from tqdm import tqdm

        bar = tqdm(total=len(cells), desc="relabel grid", unit="cell")
        threads = 1 if args.workers > 1 else None

        def record(rows: list[dict[str, Any]]) -> None:
            _append_rows(out / CSV_NAME, [r for r in rows if (r["mode"], float(r["noise"]), int(r["seed"]),
                                                              r["rule"]) not in done])
            bar.update(1)

        if args.workers > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(run_cell, str(out), m, n, s, rules, recipe, args.device, threads)
                           for m, n, s in cells]
                for f in as_completed(futures):
                    record(f.result())
        else:
            for m, n, s in cells:
                record(run_cell(str(out), m, n, s, rules, recipe, args.device, threads))
        bar.close()
    result = write_report(out, recipe)
    print(summary_markdown(result["summary"]))
    return result


if __name__ == "__main__":
    cli_run(main, get_args_parser())
