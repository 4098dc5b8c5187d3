"""Host syncs per step (issue 35): how often a training or search step makes the host wait.

    python bench/host_syncs.py [--fused True|False] [--out bench/results-cpu-host-syncs.jsonl]

Counted as the issue counted them, on the CPU: a dispatch mode sees every op that reads a value
back to the host (``.item()``/``bool()``/``float()`` of a tensor: ``aten._local_scalar_dense``)
or whose output size depends on the data (``nonzero``, boolean indexing ...). Each case runs whole
at two Training sizes (28 and 56 faces, batch 7): the syncs of epoch ends cancel out of the
difference, and the difference over the difference in steps is the count per step. A GPU waits
at each of them. ``--fused True`` is the optimizers' path on CUDA (a non-finite step skipped on
the device); without it, the CPU's default (unfused: the host reads the skip flag per step).

The bench only uses the stages' command-line entry points, so the same file run from an older
checkout (copied there) counts that checkout: the "before" line of the results file.
``tests/test_host_syncs.py`` uses the same counter and fails on any sync inside a step.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

#: ops after which the host has to wait for the device (a value or a data-dependent size)
SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
           "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
           "aten.repeat_interleave.Tensor", "aten.masked_scatter.default", "aten.is_nonzero.default",
           "aten.equal.default", "aten.index.Tensor_bool"}


class SyncCounter(TorchDispatchMode):
    """Counts the syncing ops by ``(where, op)``; ``where`` is set by the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.where = "outside"
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCING or (name.startswith("aten.index") and any(
                isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                                     for t in a) for a in args)):
            self.counts[(self.where, name)] += 1
        return func(*args, **(kwargs or {}))


TRAIN = ["--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--epochs", "1", "--batch_size", "7",
         "--snapshot_at", ""]
SEARCH = ["--search_space", "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3", "--init_channels", "2", "--layers",
          "3", "--batch_size", "7", "--crop", "12", "--epochs", "1"]
#: case -> (app, flags, steps of one epoch at n Training faces); the search trains the weights
#: on one half of Training and the architecture on the other, a step taking a batch of each
CASES = {
    "train": ("train", TRAIN, lambda n: n // 7),
    "search darts first order": ("search", [*SEARCH, "--strategy", "darts"], lambda n: n // 2 // 7),
    "search darts second order": ("search", [*SEARCH, "--strategy", "darts", "--unrolled"], lambda n: n // 2 // 7),
}
SIZES = (28, 56)


def write_csv(path: Path, n_train: int, seed: int = 1) -> Path:
    """A fer2013.csv of random faces: ``n_train`` Training rows (every class), 7 PublicTest, 7 PrivateTest."""
    from nas.data.fer2013 import write_fer2013_csv

    usages = ["Training"] * n_train + ["PublicTest"] * 7 + ["PrivateTest"] * 7
    rng = np.random.default_rng(seed)  # a draw per row, as the counts in the results file were made with
    images = np.stack([rng.integers(0, 256, 48 * 48).reshape(48, 48) for _ in usages])
    return write_fer2013_csv(path, [i % 7 for i in range(len(usages))], usages, images)


def count_case(kind: str, argv: list[str], steps: Any, root: Path, extra: list[str]) -> dict[str, Any]:
    """Syncs of whole runs at both sizes, and per step."""
    import importlib

    app = importlib.import_module(f"nas.apps.{kind}")
    total = {}
    for n in SIZES:
        csv = write_csv(root / f"{kind}{n}" / "fer2013.csv", n)
        counter = SyncCounter()
        with counter:
            app.main(app.get_args_parser().parse_args(
                [*argv, "--data", str(csv), "--device", "cpu", "--save", str(root / f"run-{kind}-{len(argv)}-{n}"),
                 "--progress", "False", "--plots", "False", "--log_interval", "10000", *extra]))
        total[n] = sum(counter.counts.values())
    a, b = SIZES
    return {"syncs": {str(k): v for k, v in total.items()}, "steps": {str(a): steps(a), str(b): steps(b)},
            "per_step": (total[b] - total[a]) / (steps(b) - steps(a))}


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/host_syncs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--fused", choices=("True", "False"), default=None,
                   help="pass --fused to the stages (True: CUDA's path); left out: the checkout's default")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    extra = ["--fused", args.fused] if args.fused else []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {name: count_case(kind, argv, steps, Path(tmp), extra) for name, (kind, argv, steps) in CASES.items()}
    return emit({"bench": "host_syncs", "fused": args.fused, "cases": cases}, args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
