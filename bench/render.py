"""SynthFER rendering speed: batched drawing against drawing one face at a time.

    python bench/render.py [--quick] [--n 1024] [--renderer v2|v1]

Both draw the same faces (the same sampled parameters) with the same code (the renderer's
``draw``, ``nas.data.synthfer.render_v2`` by default), on one CPU thread (the renderer's own
setting):

* ``batched``: ``draw(params)`` with its default chunk of 128 faces per tensor op;
* ``per_sample``: ``draw`` on one face at a time (``chunk=1``), i.e. a per-sample
  renderer running the same operations.

Figures: images/s of each (best of the rounds, taking turns) and ``ratio`` =
batched / per_sample. The per-sample side draws fewer faces (``n // 8``, at least 32):
it is slow, and its rate does not depend on the count. Prints one JSON document;
:func:`run` returns it for ``bench/run.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

if __package__ in (None, ""):
    from common import add_out_arg, cpu_model, emit
else:
    from bench.common import add_out_arg, cpu_model, emit
from nas.data.synthfer import DEFAULT_RENDERER, RENDERERS, renderer_module
from nas.runtime.cli import ArgumentParser, run as cli_run


def _params(mod: ModuleType, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return mod.sample_params(rng, rng.integers(0, 7, n), difficulty=1.0, style="fer")


def _rate(mod: ModuleType, params: dict[str, np.ndarray], chunk: int) -> float:
    n = len(params["skin"])
    t0 = time.perf_counter()
    out = mod.draw(params, seed=1, chunk=chunk)
    dt = time.perf_counter() - t0
    assert out.shape == (n, 48, 48) and out.dtype == np.uint8
    return n / dt


def run(device: str = "cpu", quick: bool = False, *, n: int | None = None, rounds: int | None = None,
        renderer: str = DEFAULT_RENDERER) -> dict[str, Any]:
    """Measure and return the figures as a dict. ``device`` is accepted for the suite's
    sake: the renderer runs on the CPU (SynthFER is rendered once and cached)."""
    mod = renderer_module(renderer)
    n = n or (256 if quick else 2048)
    rounds = rounds or (2 if quick else 3)
    n_slow = max(32, n // 8)
    batched_params, slow_params = _params(mod, n, 0), _params(mod, n_slow, 1)
    _rate(mod, _params(mod, 16, 2), 128)  # warm-up
    _rate(mod, _params(mod, 4, 3), 1)
    best = {"batched": 0.0, "per_sample": 0.0}
    for _ in range(rounds):
        best["batched"] = max(best["batched"], _rate(mod, batched_params, 128))
        best["per_sample"] = max(best["per_sample"], _rate(mod, slow_params, 1))
    return {"bench": "synthfer_render", "device": "cpu", "cpu": cpu_model(), "torch": torch.__version__, "threads": 1,
            "renderer": renderer, "settings": {"images_batched": n, "images_per_sample": n_slow, "rounds": rounds, "size": 48,
                         "batched": "draw(), 128 faces per chunk", "per_sample": "draw(chunk=1), one face at a time"},
            "images_per_s": {"batched": round(best["batched"], 1), "per_sample": round(best["per_sample"], 1)},
            "ratio": round(best["batched"] / best["per_sample"], 1)}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/render.py", description="SynthFER rendering: batched vs one face at a time.")
    p.add_argument("--quick", action="store_true", help="256 faces, two rounds")
    p.add_argument("--n", type=int, default=None, help="faces drawn batched (default 2048)")
    p.add_argument("--renderer", default=DEFAULT_RENDERER, choices=sorted(RENDERERS), help="SynthFER renderer")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict:
    return emit(run("cpu", args.quick, n=args.n, renderer=args.renderer), args, device="cpu")


if __name__ == "__main__":
    cli_run(main, get_args_parser())
