"""The benchmark suite: each fast path of the toolkit against its naive baseline.

    python bench/run.py [--device cpu|cuda|auto] [--quick] [--out FILE.json] [--threads N]
                        [--only search,train,evaluate,augment,relabel,render]

Runs, in one process, the benchmarks of ``bench/`` through their ``run()`` functions:

=============  ==============================================  ==============================================
benchmark      fast                                            naive baseline
=============  ==============================================  ==============================================
search step    SGAS supernet: decided edges run one op, pruned  every op of every edge computed (DARTS
               edges none; first and second order               supernet), fp32 contiguous
train step     the trainer's step (FER_V1 C36 L12, vgg_fer):    host float32 batches, fp32 contiguous,
               uint8 data on the device, batched augmentation,  unfused SGD, ``.item()`` every step
               channels_last, bf16 on CUDA
ten-crop eval  views cut from the batch tensor, one forward     per-sample PIL ``TenCrop`` in a DataLoader,
                                                                fp32 contiguous
augmentation   ``BatchAugment`` over the in-memory tensor      per-sample PIL pipeline through a DataLoader
relabelling    ``nas.relabel.relabel`` (whole-batch ops)       the reference script's per-sample loop
rendering      SynthFER ``draw``, 128 faces per op             the same ``draw`` one face at a time
=============  ==============================================  ==============================================

Each pair is measured in the same process, the two sides taking turns, so that the
load of a shared machine hits both alike; the ratio fast / naive is the figure that
counts (absolute rates depend on the machine and, on a shared CPU, on the moment).
With one torch thread on a CPU (the default there) the table's step and relabel
ratios are taken on this process's CPU time (medians of within-round ratios for the
steps, best blocks for relabelling), which other jobs disturb far less than the wall
clock; the wall-clock ratios are in the notes and in the JSON.
Prints one JSON document (every figure, device, torch version, threads, settings),
then a Markdown table of the ratios against the targets; ``--out`` also writes the
JSON. ``--quick`` shrinks every benchmark (smaller batches or supernets, fewer
rounds; see ``settings`` in the JSON) to run in a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.runtime.errors import FerNasError
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

if __package__ in (None, ""):
    import augment, evaluate, relabel, render, search_step, train_step  # noqa: E401
    from common import cpu_model
else:
    from bench import augment, evaluate, relabel, render, search_step, train_step
    from bench.common import cpu_model

BENCHES = ("search", "train", "evaluate", "augment", "relabel", "render")
# Targets of issue 8 on CPU (a ratio fast / naive at or above the figure); None: none set.
TARGETS = {"search": 1.0, "train": 1.0, "evaluate": 1.0, "augment": 10.0, "relabel": 50.0, "render": None}


def _search(dev: torch.device, quick: bool) -> dict[str, Any]:
    return search_step.run(str(dev), quick)


def _train(dev: torch.device, quick: bool) -> dict[str, Any]:
    mod = train_step
    cpu = dev.type == "cpu"
    out = {}
    for arch, batch in (("FER_V1", 64), ("vgg_fer", 64)):
        kw: dict[str, Any] = {"arch": arch, "init_channels": 36, "layers": 12}
        if cpu and quick:  # a FER_V1 C36 L12 step at batch 64 takes ~30 s on 2 shared cores
            kw.update(batch_size=8 if arch == "FER_V1" else 16, steps=1, rounds=5, thread_variants=False)
        elif cpu:
            kw.update(batch_size=batch, steps=1, rounds=3)
        else:
            kw.update(batch_size=batch)
        out[arch] = mod.run(str(dev), quick, **kw)
    return out


def _evaluate(dev: torch.device, quick: bool) -> dict[str, Any]:
    n = 8 if quick and dev.type == "cpu" else None
    return evaluate.run(str(dev), quick, n=n)


def _augment(dev: torch.device, quick: bool) -> dict[str, Any]:
    # threads=None: the suite has set them already
    return augment.run(str(dev), n=2000 if quick else 10000, threads=None)


def _relabel(dev: torch.device, quick: bool) -> dict[str, Any]:
    return relabel.run(str(dev), quick)


def _render(dev: torch.device, quick: bool) -> dict[str, Any]:
    return render.run("cpu", quick)


RUNNERS: dict[str, Callable[[torch.device, bool], dict[str, Any]]] = {
    "search": _search, "train": _train, "evaluate": _evaluate, "augment": _augment, "relabel": _relabel,
    "render": _render}


def _row(bench: str, what: str, fast: Any, naive: Any, ratio: float | None, unit: str, target: float | None,
         note: str = "") -> dict[str, Any]:
    met = None if target is None or ratio is None else bool(ratio >= target)
    return {"bench": bench, "what": what, "fast": fast, "naive": naive, "unit": unit, "ratio": ratio,
            "target": target, "met": met, "note": note}


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: one per headline ratio, with its target."""
    rows: list[dict[str, Any]] = []
    r = results.get("search")
    if r and "error" not in r:
        s = r["settings"]
        cfg = f"C{s['init_channels']} L{s['layers']} b{s['batch_size']} {s['image_size']}px"
        # One torch thread on a CPU: the within-round ratio of CPU times is the least
        # disturbed by other jobs; otherwise the wall clock's (both are in the JSON).
        cpu_time = results.get("_threads") == 1 and r["device"] == "cpu"
        key = "cpu_times" if cpu_time else "times"
        paired = search_step.paired_speedup
        for row in r["results"]:
            ratio = row["speedup_cpu_time"] if cpu_time else row["speedup"]
            clock = f"CPU-time ratio; wall {row['speedup']}x" if cpu_time else "wall-clock ratio"
            rows.append(_row("search", f"search step, {row['order']} order, {row['phase']} ({cfg})",
                             row["fast"]["images_per_s"], row["naive"]["images_per_s"], ratio, "images/s",
                             TARGETS["search"], f"{clock}; saved memory naive/fast {row['saved_memory_ratio']}x"))
            for name, label in (("pc4", "with --partial_channels 4"), ("fast_channels_last", "in channels_last")):
                if name in row:
                    note = f"saved {row[name]['saved_mb']} MB vs {row['fast']['saved_mb']} MB" if name == "pc4" else ""
                    rows.append(_row("search", f"  fast path {label} ({row['phase']})", row[name]["images_per_s"],
                                     row["naive"]["images_per_s"], round(paired(row[name], row["naive"], key), 2),
                                     "images/s", None, note))
        m = r.get("memory")
        if m:
            key = "peak_mb" if "peak_mb" in m["partial_channels_1"] else "saved_largest_pass_mb"
            rows.append(_row("search", f"search step memory at batch {m['batch_size']} (C{m['init_channels']} "
                             f"L{m['layers']} {m['image_size']}px)", m["partial_channels_4"][key],
                             m["partial_channels_1"][key], round(m["partial_channels_1"][key]
                                                                 / max(m["partial_channels_4"][key], 1e-9), 2),
                             "MB (fast = --partial_channels 4, naive = 1)", None,
                             "activations autograd keeps in the larger of the step's two passes" if key != "peak_mb"
                             else "torch.cuda.max_memory_allocated"))
    r = results.get("train")
    if r and "error" not in r:
        for arch, t in r.items():
            cfg = f"{arch} C{t['init_channels']} L{t['layers']} b{t['batch_size']}" if arch != "vgg_fer" else \
                f"vgg_fer b{t['batch_size']}"
            cpu_time = results.get("_threads") == 1 and t["device"] == "cpu" and t["fast"]["threads"] == 1
            rows.append(_row("train", f"training step, {cfg} ({t['fast_variant']})", t["fast"]["images_per_s"],
                             t["naive"]["images_per_s"], t["ratio_cpu_time"] if cpu_time else t["ratio"], "images/s",
                             TARGETS["train"], f"CPU-time ratio; wall {t['ratio']}x" if cpu_time else "wall clock"))
            if t["fastest_variant"] != t["fast_variant"]:
                rows.append(_row("train", f"  fastest variant ({t['fastest_variant']})",
                                 t["variants"][t["fastest_variant"]]["images_per_s"], t["naive"]["images_per_s"],
                                 t["ratio_fastest"], "images/s", None))
    r = results.get("evaluate")
    if r and "error" not in r:
        s = r["settings"]
        rows.append(_row("evaluate", f"ten-crop evaluation, {s['arch']} C{s['init_channels']} L{s['layers']}, "
                         f"{s['images']} images", r["images_per_s"]["fast"], r["images_per_s"]["naive"], r["ratio"],
                         "images/s", TARGETS["evaluate"]))
        rows.append(_row("evaluate", "  the ten views alone (no model)", r["views_images_per_s"]["fast"],
                         r["views_images_per_s"]["naive"], r["views_ratio"], "images/s", None))
    r = results.get("augment")
    if r and "error" not in r:
        ips = r["images_per_s"]
        rows.append(_row("augment", "augmentation, crop+flip+jitter (same ops as the PIL side)", ips["batched_same_ops"],
                         ips["pil"], r["ratio"], "images/s", TARGETS["augment"]))
        rows.append(_row("augment", "  default BatchAugment (adds rotation/translation/scale)", ips["batched_default"],
                         ips["pil"], r["ratio_default"], "images/s", None))
    r = results.get("relabel")
    if r and "error" not in r:
        cpu_time = results.get("_threads") == 1 and r["device"] == "cpu"
        sfx = "_cpu" if cpu_time else ""
        clock = "CPU-time ratio" if cpu_time else "wall-clock ratio"
        b = r["results"][0]
        f = b["fes"]
        rows.append(_row("relabel", f"relabelling, batch {b['batch']}, with FES gate", f["batched_us"],
                         f["loop_reference_us"], f["ratio_reference" + sfx], "µs per call (wall)",
                         TARGETS["relabel"], f"{clock}; wall {f['ratio_reference']}x"))
        if "fes_autograd" in b:
            a = b["fes_autograd"]
            rows.append(_row("relabel", f"  batch {b['batch']}, reference loop on probabilities with autograd history "
                             "(as in the reference training step)", a["batched_us"], a["loop_reference_us"],
                             a["ratio_reference" + sfx], "µs per call (wall)", None))
        for b in r["results"][1:]:
            rows.append(_row("relabel", f"  batch {b['batch']}", b["fes"]["batched_us"], b["fes"]["loop_reference_us"],
                             b["fes"]["ratio_reference" + sfx], "µs per call (wall)", None))
    r = results.get("render")
    if r and "error" not in r:
        rows.append(_row("render", "SynthFER rendering (one thread)", r["images_per_s"]["batched"],
                         r["images_per_s"]["per_sample"], r["ratio"], "images/s", TARGETS["render"]))
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            rows.append(_row(name, f"{name}: failed ({r['error']})", None, None, None, "", TARGETS.get(name)))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    def num(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| benchmark | fast | naive | unit | ratio | target | met |", "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        target = "—" if r["target"] is None else f"≥ {r['target']:g}"
        met = {None: "", True: "yes", False: "**no**"}[r["met"]]
        what = r["what"] + (f" — {r['note']}" if r["note"] else "")
        lines.append(f"| {what} | {num(r['fast'])} | {num(r['naive'])} | {r['unit']} | "
                     f"{num(r['ratio'])}{'x' if r['ratio'] is not None else ''} | {target} | {met} |")
    return "\n".join(lines)


def run_suite(device: str = "auto", quick: bool = False, only: list[str] | None = None,
              threads: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmarks and return the JSON document (``summary`` holds the table rows).
    ``threads``: torch CPU threads for the whole suite (default: 1 on CPU, where more
    threads than free cores make a shared machine's timings erratic; torch's own
    count on CUDA)."""
    dev = resolve_device(device)
    names = list(only or BENCHES)
    for n in names:
        if n not in BENCHES:
            raise FerNasError(f"--only {n!r}: unknown benchmark (choose from {', '.join(BENCHES)})")
    if threads is None and dev.type == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name} ...")
        t0 = time.perf_counter()
        try:
            results[name] = RUNNERS[name](dev, quick)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not hide the others' figures
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}
        seconds[name] = round(time.perf_counter() - t0, 1)
        log(f"[{i}/{len(names)}] {name} done in {seconds[name]:.0f} s")
    doc = {
        "suite": "fer-nas bench/run.py", "quick": quick,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
                    "cpu_count": os.cpu_count(), "load_avg": _loadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": {**seconds, "total": round(time.perf_counter() - t_all, 1)},
        "targets": {k: v for k, v in TARGETS.items() if k in names},
        "results": results,
    }
    doc["summary"] = summarize({**results, "_threads": torch.get_num_threads()})
    return doc


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/run.py", description="Benchmark suite: each fast path against its naive "
                       "baseline, ratios against the targets.")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--quick", action="store_true", help="smaller settings: a few minutes on a 2-core CPU")
    add_out_arg(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)}")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if args.threads is not None and args.threads < 1:
        raise FerNasError(f"--threads {args.threads}: must be >= 1")
    doc = emit(run_suite(args.device, args.quick, only, args.threads), args)
    print()
    print(markdown(doc["summary"]))
    return doc


if __name__ == "__main__":
    cli_run(main, get_args_parser())
