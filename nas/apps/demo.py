"""``python -m nas demo``: the whole pipeline on SynthFER, through the real readers and engines.

Stages, each a run directory under ``--out`` (default ``runs/demo``):

1. ``data/``: SynthFER exported as ``fer2013.csv``, CK+48 folders and JAFFE tiffs
   (:func:`nas.data.synthfer.export`) plus sample grids; every later stage reads these
   files with the normal readers through its ``--data`` flag.
2. ``search/``: a short SGAS search over the Auto-FERNet space on a tiny supernet
   (``search.py``).
3. ``train_found/``: the found genotype (``search/genotype.json``) retrained from scratch
   (``train_searched.py``), with training-accuracy snapshots.
4. ``train_fer_v1/``: Auto-FERNet's published cell ``FER_V1`` at the same size.
5. ``relabel/``: relabelling (the recommended rule) continued from a snapshot of ``train_found``
   (``relabel_training.py``).
6. ``ensemble/``: softmax ensemble of the found, FER_V1 and relabelled models
   (``ensemble.py``).
7. ``ck48/``: the relabelled model fine-tuned and tested on 10 subject-independent
   CK+ folds (``test_ck48.py``).
8. ``jaffe/``: the same model, leave-one-subject-out on JAFFE (``test_jaffe.py``).

Each stage runs its app's ``get_args_parser()``/``main(args)`` (:mod:`nas.apps`), the
code behind ``search.py``, ``train_searched.py`` and the other scripts, so the demo does
what the commands listed in ``REPORT.md`` do. ``demo.json`` records the settings
and every finished stage's figures; ``REPORT.md`` holds the summary table, the found
genotype and links to the stages' PNGs.

Overwrite policy: a folder that holds a demo is refused; ``--resume`` reuses the
finished stages and continues an interrupted one (from its ``last.pt`` where it has
one, else anew); ``--force`` deletes an earlier demo folder's contents and starts
over (never a folder without ``demo.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nas.runtime.cli import ArgumentParser, parse_args, run, str2bool
from nas.runtime.errors import FerNasError, RunInterrupted

__all__ = ["PRESETS", "STAGES", "get_args_parser", "main", "cli", "run_demo", "format_summary"]

STATE_FILE = "demo.json"
REPORT_FILE = "REPORT.md"
STATE_KIND = "fer-nas-demo"

#: Sizes and recipes. ``full`` is sized for about 10 minutes on a busy 2-core CPU,
#: ``quick`` for about 2; both keep every stage and all 10 CK+ folds.
_FULL: dict[str, dict[str, Any]] = {
    "data": {"fer_size": 2000, "ck_size": None, "jaffe_size": None, "noise": 0.3, "difficulty": 0.5},
    "search": {"init_channels": 4, "layers": 5, "crop": 32, "batch_size": 16, "batch_increase": 4,
               "train_portion": 0.06, "warmup_dec_epoch": 0, "decision_freq": 1,
               "epochs_after_last_decision": 0},
    "train": {"init_channels": 8, "layers": 5, "epochs": 3, "batch_size": 32, "optimizer": "adam",
              "learning_rate": 0.003, "weight_decay": 0, "snapshot_at": "0,20,25,30,35,40,50,60,70,80,85,90"},
    # what docs/robust.md recommends at 30 % noise from the noisy-label grid (bench/grids/noise):
    # consensus changes a label after 2 epochs in a row, so it needs at least 2 relabelling epochs
    "relabel": {"rule": "consensus", "fes": "False", "epochs": 3, "batch_size": 32, "optimizer": "adam",
                "learning_rate": 0.002, "weight_decay": 0, "relabel_warmup": 0},
    "ck48": {"epochs": 1, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.002, "weight_decay": 0},
    "jaffe": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.002, "weight_decay": 0},
}
# --quick changes only these
_QUICK_CHANGES: dict[str, dict[str, Any]] = {
    "data": {"fer_size": 600, "ck_size": 150, "jaffe_size": 100},
    "search": {"batch_increase": 0, "train_portion": 0.04},
    "train": {"init_channels": 4, "epochs": 2},
    "relabel": {"epochs": 2},
    "jaffe": {"epochs": 1},
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": _FULL,
    "quick": {stage: {**opts, **_QUICK_CHANGES.get(stage, {})} for stage, opts in _FULL.items()},
}


# ----------------------------------------------------------------------------- flags
def get_args_parser(prog: str = "fernas demo") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    p = ArgumentParser(prog=prog,
                       description="The whole fer-nas pipeline on SynthFER exports read through the real readers: "
                                   "search, retraining, relabelling, ensemble, CK+ and JAFFE tests; writes "
                                   "OUT/REPORT.md.")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (about 2 minutes on a CPU)")
    p.add_argument("--out", default="runs/demo", help="output folder, one run directory per stage (default runs/demo)")
    p.add_argument("--seed", type=int, default=None, help="seed of the data and of every stage (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="delete an earlier demo in --out and start over")
    p.add_argument("--resume", action="store_true",
                   help="continue the demo in --out: finished stages are reused, an interrupted one continues")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: these small models gain little from more, and on a busy "
                        "machine more threads were many times slower)")
    p.add_argument("--progress", type=str2bool, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    return p


# ----------------------------------------------------------------------------- helpers
def _argv(options: Mapping[str, Any]) -> list[str]:
    """``{"epochs": 3, "cutout": True}`` -> ``["--epochs", "3", "--cutout"]``."""
    out: list[str] = []
    for k, v in options.items():
        if v is None or v is False:
            continue
        out.append(f"--{k}")
        if v is not True:
            out.append(str(v))
    return out


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pct(v: Any) -> str:
    from nas.runtime.cli import fmt_pct

    return fmt_pct(_num(v), unit=" %")


def _genotype_line(g: Mapping[str, Any]) -> str:
    def cell(pairs: Sequence[Sequence[Any]]) -> str:
        return " ".join(f"{op}@{i}" for op, i in pairs)

    return f"normal [{cell(g['normal'])}] reduce [{cell(g['reduce'])}]"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FerNasError(f"{path}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise FerNasError(f"{path}: expected a JSON object")
    return d


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    from nas.runtime.checkpoint import atomic_write_text

    atomic_write_text(json.dumps(obj, indent=2, default=str) + "\n", path)


class Context:
    """What every stage needs: the folder, settings, and how to start a stage's run."""

    def __init__(self, out: Path, preset: Mapping[str, Any], seed: int, device: str, progress: bool | None,
                 resume: bool, state: dict[str, Any], threads: int = 1) -> None:
        self.out, self.preset, self.seed, self.device = out, preset, seed, device
        self.progress, self.resume, self.state, self.threads = progress, resume, state, threads
        self.commands: dict[str, str] = state.setdefault("commands", {})

    def path(self, *parts: str) -> str:
        """A path inside the demo's output folder, as a flag value."""
        return str(self.out.joinpath(*parts))

    def common(self) -> list[str]:
        """The flags every stage of the demo takes: seed, device, progress."""
        flags = ["--seed", str(self.seed), "--device", self.device]
        if self.progress is not None:
            flags += ["--progress", str(bool(self.progress))]
        return flags

    def train_flags(self) -> list[str]:
        """Flags of the training engine (the engine itself keeps networks that torch's
        multi-threaded CPU channels_last backward crashes on in the contiguous layout)."""
        return self.common()

    def start_flags(self, stage_dir: str, marker: str) -> list[str]:
        """``--resume DIR`` for an interrupted stage that left ``marker`` behind when the
        demo is resumed, else ``--save DIR --force`` (the folder is the demo's own)."""
        d = self.out / stage_dir
        if self.resume and (d / marker).is_file():
            return ["--resume", str(d)]
        return ["--save", str(d), "--force"]

    def record_command(self, stage: str, script: str, argv: Sequence[str]) -> None:
        """Keep the command that started a stage, as README shows it (no --force, not the resumed one)."""
        shown = [a for a in argv if a not in ("--force",)]
        if "--resume" in shown:  # the command that started it is the one to show
            return
        self.commands[stage] = " ".join([f"python {script}", *(_quote(a) for a in shown)])


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./,=:" for c in a) else "'" + a.replace("'", "'\\''") + "'"


def _run_app(ctx: Context, stage: str, app: Any, script: str, argv: list[str]) -> dict[str, Any]:
    """Parse ``argv`` with the app's own parser and run its ``main`` (what ``python
    SCRIPT ARGV`` does); the command is recorded for the report."""
    args = parse_args(app.get_args_parser(), argv)
    ctx.record_command(stage, script, argv)
    return app.main(args)


# ----------------------------------------------------------------------------- stages
def stage_data(ctx: Context) -> dict[str, Any]:
    """Export SynthFER in the three file formats and draw sample grids."""
    from nas.data import load_dataset, synthfer
    from nas.data.dataset import SPLITS

    p = ctx.preset["data"]
    d = ctx.out / "data"
    d.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"noise": p["noise"], "difficulty": p["difficulty"]}
    for fmt, size in (("fer2013", p["fer_size"]), ("ck48", p["ck_size"]), ("jaffe", p["jaffe_size"])):
        res = synthfer.export(fmt, d / fmt, size=size, seed=ctx.seed, noise=p["noise"] if fmt == "fer2013" else 0.0,
                              difficulty=p["difficulty"], force=True)
        data = load_dataset(d / fmt)  # read back with the real reader, as the stages will
        entry: dict[str, Any] = {"path": str(d / fmt), "format": data.format, "images": len(data),
                                 "flipped": int(res.get("flipped") or 0)}
        if fmt == "fer2013":
            entry["splits"] = {s: int((data.split == i).sum()) for i, s in enumerate(SPLITS)}
        if data.subjects is not None:
            entry["subjects"] = len(set(data.subjects))
        info[fmt] = entry
    ctx.commands["data"] = "\n".join(
        f"python -m nas.data.synthfer --out {ctx.path('data', fmt)} --format {fmt}"
        + (f" --size {size}" if size else "") + f" --seed {ctx.seed} --difficulty {p['difficulty']}"
        + (f" --noise {p['noise']}" if fmt == "fer2013" else "")
        for fmt, size in (("fer2013", p["fer_size"]), ("ck48", p["ck_size"]), ("jaffe", p["jaffe_size"])))
    previews = {}
    for style, name in (("fer", "preview_fer2013.png"), ("ck", "preview_ck48.png"), ("jaffe", "preview_jaffe.png")):
        previews[style] = str(synthfer.preview(d / name, style=style, difficulty=p["difficulty"], seed=ctx.seed))
    info["previews"] = previews
    fer = info["fer2013"]
    sp = fer["splits"]
    info["what"] = (f"SynthFER exports (difficulty {p['difficulty']}): fer2013.csv {fer['images']} rows "
                    f"({sp['Training']}/{sp['PublicTest']}/{sp['PrivateTest']}), CK+48 {info['ck48']['images']} "
                    f"images, JAFFE {info['jaffe']['images']} tiffs")
    info["result"] = (f"{fer['flipped']} of {sp['Training']} training labels flipped; "
                      f"CK+ {info['ck48'].get('subjects')} subjects, JAFFE {info['jaffe'].get('subjects')}")
    return info


def stage_search(ctx: Context) -> dict[str, Any]:
    """SGAS on a tiny supernet over the Auto-FERNet space (Training split only)."""
    from nas.apps import search

    p = ctx.preset["search"]
    d = ctx.out / "search"
    if ctx.resume and (d / "last.pt").is_file():
        argv = ["--resume", str(d), "--device", ctx.device]
        if ctx.progress is not None:
            argv += ["--progress", str(bool(ctx.progress))]
    else:
        argv = ["--dataset", "fer2013", "--data", ctx.path("data", "fer2013"), "--strategy", "sgas",
                "--search_space", "auto_fernet", *_argv(p), *ctx.common(), "--save", str(d), "--force"]
    res = _run_app(ctx, "search", search, "search.py", argv)
    g = res["genotype"]
    rows = _csv(d / "metrics.csv")
    return {"genotype": g, "genotype_file": str(d / "genotype.json"), "epochs": res["epochs"],
            "complete": res["complete"],
            "what": (f"SGAS, auto_fernet space, supernet C={p['init_channels']} L={p['layers']}, crop {p['crop']}, "
                     f"{res['epochs']} epochs, {100 * p['train_portion']:g} % of Training for the weights, the rest "
                     "for the architecture"),
            "result": "genotype " + _genotype_line(g),
            "last_train_acc": _num(rows[-1].get("train_acc")) if rows else None}


def _train_summary(res: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    return {"run_dir": str(run_dir), "test_acc": res.get("test_acc"), "val_acc": res.get("val_acc"),
            "selected_epoch": res.get("selected_epoch"), "epochs": res.get("epochs"), "params": res.get("params"),
            "result": (f"PrivateTest {_pct(res.get('test_acc'))} at epoch {res.get('selected_epoch')} "
                       f"(best PublicTest {_pct(res.get('val_acc'))}); {res.get('params'):,} parameters")}


def _train(ctx: Context, stage: str, arch: str, label: str) -> dict[str, Any]:
    p = dict(ctx.preset["train"])
    argv = ["--arch", arch, "--dataset", "fer2013", "--data", ctx.path("data", "fer2013"), *_argv(p),
            *ctx.train_flags(), *ctx.start_flags(stage, "last.pt")]
    from nas.apps import train

    res = _run_app(ctx, stage, train, "train_searched.py", argv)
    out = _train_summary(res, ctx.out / stage)
    out["what"] = (f"{label} retrained from scratch, C={p['init_channels']} L={p['layers']}, {p['epochs']} epoch(s), "
                   f"{p['optimizer']} lr {p['learning_rate']}")
    return out


def stage_train_found(ctx: Context) -> dict[str, Any]:
    """Retrain the genotype the search found (the file it wrote)."""
    return _train(ctx, "train_found", ctx.path("search", "genotype.json"), "found genotype")


def stage_train_fer_v1(ctx: Context) -> dict[str, Any]:
    """Retrain Auto-FERNet's published cell at the same size."""
    return _train(ctx, "train_fer_v1", "FER_V1", "FER_V1")


def pick_snapshot(run_dir: Path) -> Path:
    """The snapshot to relabel from: the highest training-accuracy threshold reached
    before the run's last epoch (a model that has not converged, as the reference's
    85 % snapshot), else the highest one reached at all."""
    from nas.runtime.checkpoint import safe_load

    snaps = []
    for f in run_dir.glob("snapshot_train*.pt"):
        thr = _num(f.stem[len("snapshot_train"):].replace("p", "."))
        if thr is not None:
            ck = safe_load(f)
            snaps.append((thr, int(ck.get("epoch") or 0), int(ck.get("epochs") or 0), f))
    if not snaps:
        raise FerNasError(f"{run_dir}: no snapshot_train*.pt was written (training accuracy never reached the "
                          "lowest --snapshot_at threshold)")
    early = [s for s in snaps if s[1] < s[2]]
    return max(early or snaps, key=lambda s: s[0])[3]


def stage_relabel(ctx: Context) -> dict[str, Any]:
    """Relabelling (the rule the docs recommend) from a snapshot of the found genotype's retraining."""
    p = ctx.preset["relabel"]
    start = ctx.start_flags("relabel", "last.pt")
    if start[0] != "--resume":
        start = ["--checkpoint", str(pick_snapshot(ctx.out / "train_found")), *start]
    argv = [*start, "--dataset", "fer2013", "--data", ctx.path("data", "fer2013"), *_argv(p), *ctx.train_flags()]
    from nas.apps import relabel

    res = _run_app(ctx, "relabel", relabel, "relabel_training.py", argv)
    out = _train_summary(res, ctx.out / "relabel")
    rl = res.get("relabel") or {}
    out.update(start_checkpoint=res.get("start_checkpoint"), changed=rl.get("changed"), restored=rl.get("restored"),
               harmed=rl.get("harmed"), precision=rl.get("precision"), recall=rl.get("mean_recall"),
               harm=rl.get("mean_harm"))
    from nas.relabel.stage import DEFAULT_THRESHOLDS

    gate = "FES gate on" if str(p["fes"]) == "True" else "no FES gate"
    out["what"] = (f"relabelling from {Path(str(res.get('start_checkpoint'))).name} of train_found, rule {p['rule']} "
                   f"(margin {DEFAULT_THRESHOLDS[p['rule']]}), {gate}, {p['epochs']} epoch(s), {p['optimizer']} lr "
                   f"{p['learning_rate']}")
    out["result"] = (f"PrivateTest {_pct(res.get('test_acc'))}; {out['changed']} label changes, precision "
                     f"{_pct(out['precision'])}, recall {_pct(out['recall'])}, harm {_pct(out['harm'])}")
    return out


def stage_ensemble(ctx: Context) -> dict[str, Any]:
    """Softmax average of the found, FER_V1 and relabelled models."""
    members = [ctx.path("train_found"), ctx.path("train_fer_v1"), ctx.path("relabel")]
    argv = ["--model_names", ",".join(members), "--dataset", "fer2013", "--data", ctx.path("data", "fer2013"),
            "--method", "softmax", "--device", ctx.device, "--save", ctx.path("ensemble"), "--force"]
    from nas.apps import ensemble

    res = _run_app(ctx, "ensemble", ensemble, "ensemble.py", argv)
    ens = res["ensemble"]
    accs = [m["private_acc"] for m in res["members"]]
    return {"private_acc": ens["private_acc"], "public_acc": ens["public_acc"], "member_private_acc": accs,
            "what": "softmax ensemble of found genotype, FER_V1 and relabelled model",
            "result": (f"PrivateTest {_pct(ens['private_acc'])} (members " + " / ".join(_pct(a) for a in accs)
                       + ")")}


def _crossdata(ctx: Context, stage: str, kind: str, extra: list[str], label: str) -> dict[str, Any]:
    p = ctx.preset[stage]
    start = ctx.start_flags(stage, "config.yaml")
    if start[0] != "--resume":
        start = ["--checkpoint", ctx.path("relabel", "best.pt"), *start]
    argv = [*start, "--dataset", kind, "--data", ctx.path("data", kind), *extra, *_argv(p), *ctx.train_flags()]
    from nas.apps import ck48, jaffe

    res = _run_app(ctx, stage, ck48 if kind == "ck48" else jaffe, f"test_{kind}.py", argv)
    return {"mean": res["mean_accuracy"], "std": res["std_accuracy"], "pooled": res["pooled"]["accuracy"],
            "folds": res["folds"], "epochs": p["epochs"],
            "what": f"{label}, {res['folds']} {'folds' if kind == 'ck48' else 'subjects'}, {p['epochs']} epoch(s) each",
            "result": (f"{_pct(res['mean_accuracy'])} ± {_num(res['std_accuracy']) or 0:.2f} over "
                       f"{'folds' if kind == 'ck48' else 'subjects'} (pooled {_pct(res['pooled']['accuracy'])})")}


def stage_ck48(ctx: Context) -> dict[str, Any]:
    """CK+-style test: the relabelled model fine-tuned on 10 subject-independent folds."""
    return _crossdata(ctx, "ck48", "ck48", ["--protocol", "subject", "--folds", "10"],
                      "relabelled model fine-tuned per CK+ fold")


def stage_jaffe(ctx: Context) -> dict[str, Any]:
    """JAFFE-style test: leave-one-subject-out fine-tuning."""
    return _crossdata(ctx, "jaffe", "jaffe", ["--finetune", "loso"],
                      "relabelled model, leave-one-subject-out on JAFFE")


#: (name, title, function) in pipeline order.
STAGES: list[tuple[str, str, Callable[[Context], dict[str, Any]]]] = [
    ("data", "export SynthFER (fer2013.csv, CK+48, JAFFE)", stage_data),
    ("search", "architecture search (SGAS)", stage_search),
    ("train_found", "retrain the found genotype", stage_train_found),
    ("train_fer_v1", "retrain FER_V1", stage_train_fer_v1),
    ("relabel", "relabelling from a snapshot (the recommended rule)", stage_relabel),
    ("ensemble", "ensemble of three", stage_ensemble),
    ("ck48", "CK+ 10-fold test", stage_ck48),
    ("jaffe", "JAFFE leave-one-subject-out test", stage_jaffe),
]


def _csv(path: Path) -> list[dict[str, str]]:
    from nas.runtime.checkpoint import read_csv_rows

    return read_csv_rows(path) if path.is_file() else []


# ----------------------------------------------------------------------------- the folder
def prepare_out(out: Path, *, force: bool, resume: bool) -> dict[str, Any] | None:
    """Apply the overwrite policy; returns the saved state when resuming."""
    from nas.runtime.checkpoint import RunDir

    state_file = out / STATE_FILE
    if resume and force:
        raise FerNasError("--resume and --force exclude each other")
    if resume:
        if not state_file.is_file():
            raise FerNasError(f"{out}: nothing to resume (no {STATE_FILE})")
        state = _read_json(state_file)
        if state.get("kind") != STATE_KIND or not isinstance(state.get("stages"), dict):
            raise FerNasError(f"{state_file}: not a demo state file")
        RunDir.check_writable(out, 50)
        return state
    if out.exists():
        if not out.is_dir():
            raise FerNasError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not state_file.is_file():
                raise FerNasError(f"{out}: folder is not empty and holds no demo; choose another --out "
                                  "(--force replaces only an earlier demo)")
            if not force:
                raise FerNasError(f"{out}: folder already holds a demo; pass --resume to continue it (finished "
                                  "stages are reused) or --force to start over")
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    RunDir.check_writable(out, 50)
    return None


# ----------------------------------------------------------------------------- the run
def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, seed: int | None = None, device: str = "auto",
             force: bool = False, resume: bool = False, progress: bool | None = None,
             threads: int = 1) -> dict[str, Any]:
    """Run (or resume) the demo; returns the state (settings, per-stage figures and
    wall times) that ``demo.json`` holds. Writes ``REPORT.md`` and prints the summary."""
    from nas import __version__
    from nas.runtime.device import resolve_device

    import torch

    resolve_device(device)  # a bad --device fails before anything is written
    if threads < 1:
        raise FerNasError(f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)
    out = Path(out)
    saved = prepare_out(out, force=force, resume=resume)
    if saved is not None:
        cfg = saved.get("config") or {}
        if quick and not cfg.get("quick"):
            raise FerNasError(f"{out}: holds a full demo; --quick cannot resume it (use --force to start over)")
        if seed is not None and seed != cfg.get("seed"):
            raise FerNasError(f"{out}: holds a demo with seed {cfg.get('seed')}; --seed {seed} cannot resume it")
        quick, seed = bool(cfg.get("quick")), int(cfg.get("seed", 0))
        preset = cfg.get("preset") or PRESETS["quick" if quick else "full"]
        state = saved
    else:
        seed = 0 if seed is None else int(seed)
        preset = PRESETS["quick" if quick else "full"]
        state = {"kind": STATE_KIND, "toolkit_version": __version__,
                 "config": {"quick": quick, "seed": seed, "preset": preset},
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}, "commands": {}}
    state["device"] = str(resolve_device(device))
    state_file = out / STATE_FILE
    _write_json(state_file, state)
    ctx = Context(out, preset, seed, device, progress, resume, state, threads)
    print(f"fer-nas demo ({'quick' if quick else 'full'}, seed {seed}, device {state['device']}) -> {out}/",
          flush=True)
    bar = _stage_bar(progress, len(STAGES))
    try:
        for k, (name, title, fn) in enumerate(STAGES, start=1):
            done = state["stages"].get(name)
            if done and done.get("complete"):
                _say(f"[{k}/{len(STAGES)}] {name}: {title}: finished earlier, reused ({done.get('wall_s', 0):.0f} s)")
                if bar is not None:
                    bar.update(1)
                continue
            _say(f"[{k}/{len(STAGES)}] {name}: {title}")
            if bar is not None:
                bar.set_description(f"demo ({name})")
            t0 = time.perf_counter()
            try:
                figures = fn(ctx)
            except RunInterrupted as e:
                where = str(e).split("; continue with")[0]  # the stage's own hint names its folder, not the demo
                raise RunInterrupted(e.signum, f"stage {name} {where}; continue the demo with: "
                                               f"python -m nas demo --out {out} --resume") from None
            figures["wall_s"] = round(time.perf_counter() - t0, 1)
            figures["complete"] = True
            state["stages"][name] = figures
            _write_json(state_file, state)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    state["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_json(state_file, state)
    report = write_report(out, state)
    print("\n" + format_summary(state), flush=True)
    print(f"\nreport: {report}", flush=True)
    return state


def _stage_bar(progress: bool | None, total: int):
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc="demo", unit="stage", position=0, leave=True, dynamic_ncols=True)


def _say(line: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(line)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- summary and report
def summary_rows(state: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(stage, what ran, key figure, wall time) per stage, and a total row."""
    rows = []
    total = 0.0
    for name, _title, _fn in STAGES:
        s = (state.get("stages") or {}).get(name) or {}
        wall = _num(s.get("wall_s"))
        total += wall or 0.0
        rows.append((name, str(s.get("what", "not run")), str(s.get("result", "")),
                     "" if wall is None else f"{wall:.0f} s"))
    rows.append(("total", "", "", f"{total:.0f} s ({total / 60:.1f} min)"))
    return rows


def format_summary(state: Mapping[str, Any], width: int = 100) -> str:
    """The summary as plain text (what the demo prints at the end): per stage its wall
    time, what ran and, after an arrow, the key figure; long text is wrapped."""
    import textwrap

    rows = summary_rows(state)
    w0 = max(len(r[0]) for r in rows)
    w3 = max(len("wall time"), *(len(r[3].split(" (")[0]) for r in rows))
    lines = [f"{'stage':<{w0}}  {'wall time':>{w3}}  what ran -> result", f"{'-' * w0}  {'-' * w3}  {'-' * width}"]
    for name, what, result, wall in rows:
        if name == "total":
            lines.append(f"{'-' * w0}  {'-' * w3}  {'-' * width}")
            lines.append(f"{name:<{w0}}  {wall.split(' (')[0]:>{w3}}  {wall.split(' (')[1][:-1] if ' (' in wall else ''}")
            continue
        body = textwrap.wrap(what, width) + textwrap.wrap("-> " + result, width, subsequent_indent="   ")
        for j, text in enumerate(body or [""]):
            lines.append(f"{name if j == 0 else '':<{w0}}  {wall if j == 0 else '':>{w3}}  {text}")
    return "\n".join(lines)


#: Figures each stage writes, in the order the report shows them (relative to --out).
FIGURES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("data", "SynthFER samples (a row per class: two clean prototypes, then weak to strong expressions)",
     [("data/preview_fer2013.png", "FER2013-style export"), ("data/preview_ck48.png", "CK+48-style export"),
      ("data/preview_jaffe.png", "JAFFE-style export")]),
    ("search", "Found cells", [("search/cell_normal.png", "normal cell"), ("search/cell_reduce.png", "reduction cell")]),
    ("train_found", "Found genotype, retrained", [("train_found/curves.png", "training curves"),
                                                  ("train_found/confusion.png", "PrivateTest confusion matrix"),
                                                  ("train_found/misclassified.png", "misclassified examples"),
                                                  ("train_found/saliency.png", "saliency")]),
    ("train_fer_v1", "FER_V1, retrained", [("train_fer_v1/curves.png", "training curves"),
                                           ("train_fer_v1/confusion.png", "PrivateTest confusion matrix"),
                                           ("train_fer_v1/cell_normal.png", "FER_V1 normal cell")]),
    ("relabel", "Relabelling", [("relabel/relabel.png", "label changes, precision, recall, harm, transitions"),
                                ("relabel/curves.png", "training curves"),
                                ("relabel/confusion.png", "PrivateTest confusion matrix")]),
    ("ensemble", "Ensemble", [("ensemble/confusion.png", "ensemble PrivateTest confusion matrix")]),
    ("ck48", "CK+ 10-fold test", [("ck48/confusion.png", "confusion matrix over all folds")]),
    ("jaffe", "JAFFE leave-one-subject-out", [("jaffe/confusion.png", "confusion matrix over all subjects")]),
]


def write_report(out: Path, state: Mapping[str, Any]) -> Path:
    """``OUT/REPORT.md``: settings, the summary table, the found genotype, figures
    (relative links, only those that exist) and the command of each stage."""
    from nas.runtime.checkpoint import atomic_write_text

    cfg = state.get("config") or {}
    stages = state.get("stages") or {}
    lines = [
        "# fer-nas demo report", "",
        f"`python -m nas demo{' --quick' if cfg.get('quick') else ''} --seed {cfg.get('seed')}` on SynthFER, "
        f"device {state.get('device')}, started {state.get('started')}, finished {state.get('finished')}. "
        "Every figure comes from the files the stages wrote into this folder; PrivateTest accuracies are "
        "taken at the epoch with the best PublicTest accuracy.", "",
        "## Summary", "",
        "| stage | what ran | result | wall time |", "|---|---|---|---|",
    ]
    for name, what, result, wall in summary_rows(state):
        cell = f"[{name}]({name}/)" if (out / name).is_dir() else name
        lines.append(f"| {cell} | {what} | {result} | {wall} |")
    search = stages.get("search") or {}
    if search.get("genotype"):
        lines += ["", "## Found genotype", "",
                  f"`search/genotype.json` ({'all edges decided' if search.get('complete') else 'not every edge decided'}); "
                  "it is what `train_found` retrained (the checkpoint embeds it). Load it with "
                  f"`nas.genotypes.load_genotype(\"{out}/search/genotype.json\")` or train it with "
                  f"`python train_searched.py --arch {out}/search/genotype.json`.", "",
                  "```json", json.dumps(search["genotype"]), "```"]
    rl = stages.get("relabel") or {}
    if rl:
        lines += ["", "## Relabelling figures", "",
                  f"Started from `{rl.get('start_checkpoint')}`. Over the run: {rl.get('changed')} label changes, "
                  f"{rl.get('restored')} restored to the clean label, {rl.get('harmed')} clean labels harmed; "
                  f"precision {_pct(rl.get('precision'))} (restored / changed), recall {_pct(rl.get('recall'))} and "
                  f"harm {_pct(rl.get('harm'))} (means per relabelling epoch; see docs/relabelling.md)."]
    lines += ["", "## Figures", ""]
    any_png = False
    for name, heading, figs in FIGURES:
        present = [(p, cap) for p, cap in figs if (out / p).is_file()]
        if not present:
            continue
        any_png = True
        lines.append(f"### {heading}")
        lines.append("")
        for p, cap in present:
            lines.append(f"![{cap}]({p})")
        lines.append("")
    if not any_png:
        lines += ["No PNG figures: matplotlib is not installed (pip install matplotlib) or plots were off.", ""]
    cmds = state.get("commands") or {}
    if cmds:
        lines += ["## The stages as commands", "",
                  "Each stage is what this command does (the demo calls the same `get_args_parser()`/`main()`):",
                  "", "```bash"]
        lines += [cmds[n] for n, _t, _f in STAGES if n in cmds]
        lines += ["```", ""]
    path = out / REPORT_FILE
    atomic_write_text("\n".join(lines).rstrip() + "\n", path)
    return path


# ----------------------------------------------------------------------------- entry points
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole pipeline demo with parsed flags; returns its summary."""
    return run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device, force=args.force,
                    resume=args.resume, progress=args.progress, threads=args.threads)


def cli(argv: Sequence[str] | None = None, prog: str = "fernas demo") -> None:
    """``fernas demo ARGS``: bad input is one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
