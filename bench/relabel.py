"""Speed of the batched relabelling rule against per-sample Python loops.

    python bench/relabel.py [--device cpu|cuda|auto] [--quick] [--out FILE.json]

Prints JSON: for each batch size and with/without the FES gate, microseconds per call of

* ``batched``: ``nas.relabel.relabel`` as called (a handful of whole-batch torch ops);
* ``loop_reference``: the per-sample loop as the Auto-FERNet reference script writes it
  (inside the training step: per sample ``torch.max`` of the row and the target's
  probability, evaluated in each condition, ``topk`` for the prediction, a Python
  FES table, the label written back into the target tensor); the rule's ``0 <``
  condition is applied without FES too, so that all three agree;
* ``loop_lean``: ``nas.relabel.relabel_loop``, a per-sample loop with each quantity
  computed once;

and the ratios loop/batched (``cpu_time_us`` and ``ratio_*_cpu``: the same minima in
this process's CPU time). All three are asserted to give the same labels first.
``ratio_batch64`` is loop_reference / batched with FES at batch 64. That baseline is conservative: in the reference
script the probabilities carry autograd history, which makes each of its element
reads dearer still; here they are plain tensors. ``fes_autograd`` (batch 64) times the
reference loop on probabilities with their history, as in the reference training
step (``ratio_batch64_autograd``; the batched rule gets them detached, as the trainer
hands them over).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.data.ferplus import DEFAULT_FES
from nas.relabel.rules import relabel, relabel_loop
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

THRESHOLD = 0.2
FES_THRESHOLD = 0.03


def _time(fns: Sequence[Callable[[], Any]], device: torch.device, min_time: float, max_calls: int,
          cpu_out: list[float] | None = None) -> list[float]:
    """Seconds per call of each of ``fns``: the best (minimum) per-call average over
    blocks of about 20 ms. The functions take turns block by block for about
    ``min_time`` seconds in all, so that a burst of load from other processes hits
    them alike; the minimum is the figure least disturbed by such bursts. ``cpu_out``
    receives the same minimum in this process's CPU time (with one thread: the
    work of a call, whatever other jobs take of the cores)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    blocks = []
    for fn in fns:
        for _ in range(3):
            fn()  # warm-up (allocator, kernels, caches)
        sync()
        start = time.perf_counter()
        fn()
        sync()
        once = max(time.perf_counter() - start, 1e-7)
        blocks.append(max(1, min(max_calls, int(0.02 / once))))
    best = [float("inf")] * len(fns)
    best_cpu = [float("inf")] * len(fns)
    calls = [0] * len(fns)
    deadline = time.perf_counter() + min_time
    while min(calls) == 0 or (time.perf_counter() < deadline and all(c < max_calls for c in calls)):
        for k, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(blocks[k]):
                fn()
            sync()
            best[k] = min(best[k], (time.perf_counter() - t0) / blocks[k])
            best_cpu[k] = min(best_cpu[k], (time.process_time() - c0) / blocks[k])
            calls[k] += blocks[k]
    if cpu_out is not None:
        cpu_out[:] = best_cpu
    return best


def reference_loop(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
                   fes_threshold: float = 0.03) -> torch.Tensor:
    """The relabelling loop in the shape of the reference script (one sample per
    iteration, conditions re-evaluated as written, label written back in place)."""
    target = targets.clone()
    table = None if fes is None else (fes.tolist() if hasattr(fes, "tolist") else fes)
    for i in range(target.size(0)):
        if table is not None:
            if torch.max(probs[i]) - probs[i][target[i].item()] < threshold \
                    and torch.max(probs[i]) - probs[i][target[i].item()] > 0 \
                    and table[target[i].item()][probs[i].topk(1, 0, True)[1].item()] > fes_threshold:
                target[i] = probs[i].topk(1, 0, True)[1]
        elif torch.max(probs[i]) - probs[i][target[i].item()] < threshold \
                and torch.max(probs[i]) - probs[i][target[i].item()] > 0:
            target[i] = probs[i].topk(1, 0, True)[1]
    return target


def run(device: str = "cpu", quick: bool = False, threads: int | None = None) -> dict:
    """Benchmark figures as a dict (see the module docstring). ``threads`` sets torch's
    intra-op threads for the run (restored afterwards); None keeps the current setting."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(resolve_device(device), quick)
    finally:
        torch.set_num_threads(saved)


def _run(dev: torch.device, quick: bool) -> dict:
    batches = [64, 256, 1024] if quick else [64, 128, 256, 1024, 8192]
    min_time = 0.3 if quick else 1.0
    headline = 0.8 if quick else 2.0  # batch 64 with FES: the figure the target is set on
    gen = torch.Generator().manual_seed(0)
    fes_dev = torch.tensor(DEFAULT_FES, dtype=torch.float32, device=dev)
    results = []
    for n in batches:
        # Peaked softmax rows so that a fair share of samples sit within the margin.
        probs = torch.softmax(2.0 * torch.randn(n, 7, generator=gen), dim=1).to(dev)
        targets = torch.randint(0, 7, (n,), generator=gen).to(dev)
        row: dict[str, Any] = {"batch": n}
        for label, fes in (("no_fes", None), ("fes", DEFAULT_FES), ("fes_tensor", fes_dev)):
            fast, changed = relabel(probs, targets, THRESHOLD, fes, FES_THRESHOLD, return_mask=True)
            lean = relabel_loop(probs, targets, THRESHOLD, fes, FES_THRESHOLD)
            ref = reference_loop(probs, targets, THRESHOLD, fes, FES_THRESHOLD)
            assert torch.equal(fast, lean), f"batched and lean loop disagree at batch {n} ({label})"
            assert torch.equal(fast, ref), f"batched and reference loop disagree at batch {n} ({label})"
            cpu: list[float] = []
            t_fast, t_lean, t_ref = _time(
                [lambda: relabel(probs, targets, THRESHOLD, fes, FES_THRESHOLD),
                 lambda: relabel_loop(probs, targets, THRESHOLD, fes, FES_THRESHOLD),
                 lambda: reference_loop(probs, targets, THRESHOLD, fes, FES_THRESHOLD)],
                dev, headline if (n == batches[0] and label == "fes") else min_time, 100000, cpu)
            row[label] = {"batched_us": round(t_fast * 1e6, 2),
                          "loop_reference_us": round(t_ref * 1e6, 1), "loop_lean_us": round(t_lean * 1e6, 1),
                          "ratio_reference": round(t_ref / t_fast, 1), "ratio_lean": round(t_lean / t_fast, 1),
                          "changed": int(changed.sum()),
                          "cpu_time_us": {"batched": round(cpu[0] * 1e6, 2), "loop_lean": round(cpu[1] * 1e6, 1),
                                          "loop_reference": round(cpu[2] * 1e6, 1)},
                          "ratio_reference_cpu": round(cpu[2] / max(cpu[0], 1e-12), 1)}
        if n == batches[0]:
            # As in the reference training step: the probabilities come from the logits
            # with their autograd history, so each element read records graph nodes.
            logits = torch.log(probs).requires_grad_(True)
            with torch.enable_grad():
                live = torch.softmax(logits, dim=1)
                assert torch.equal(reference_loop(live, targets, THRESHOLD, DEFAULT_FES, FES_THRESHOLD),
                                   relabel(live, targets, THRESHOLD, DEFAULT_FES, FES_THRESHOLD))
                cpu = []
                t_fast, t_ref = _time([lambda: relabel(live.detach(), targets, THRESHOLD, DEFAULT_FES, FES_THRESHOLD),
                                       lambda: reference_loop(live, targets, THRESHOLD, DEFAULT_FES, FES_THRESHOLD)],
                                      dev, min_time, 100000, cpu)
            row["fes_autograd"] = {"batched_us": round(t_fast * 1e6, 2), "loop_reference_us": round(t_ref * 1e6, 1),
                                   "ratio_reference": round(t_ref / t_fast, 1),
                                   "ratio_reference_cpu": round(cpu[1] / max(cpu[0], 1e-12), 1)}
        results.append(row)
    return {"bench": "relabel", "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "threshold": THRESHOLD, "fes_threshold": FES_THRESHOLD, "quick": quick, "results": results,
            "ratio_batch64": results[0]["fes"]["ratio_reference"],
            "ratio_batch64_lean": results[0]["fes"]["ratio_lean"],
            "ratio_batch64_autograd": results[0]["fes_autograd"]["ratio_reference"],
            "ratio_batch64_cpu_time": results[0]["fes"]["ratio_reference_cpu"]}


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="bench/relabel.py", description="Batched relabel rule vs a per-sample loop.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timings")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add_out_arg(parser)
    return parser


def main(args: argparse.Namespace) -> dict:
    result = run(args.device, args.quick, args.threads)
    return emit(result, args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
