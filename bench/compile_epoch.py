"""Is torch.compile worth it on this CPU, end to end? Whole training epochs, eager against compiled.

    python bench/compile_epoch.py [--archs cnn_gap,FER_V1] [--epochs 3] [--size 3000] [--rounds 2]
                                  [--out bench/results-cpu-compile-epoch.json]

For each network (``FER_V1`` at the retraining size of ``bench/nas_eval.py``, C8 L5; ``cnn_gap``
as the noisy-label grid trains it), ``--rounds`` pairs of runs of ``train_searched.py`` on the
same SynthFER data (Training 80 % of ``--size``, 200 + 200 test faces), eager and
``--compile`` (inductor) in turns, each for ``--epochs`` epochs. The first epoch of a compiled run
holds the compilation; the ratio is taken on the later epochs' step time (``time_s`` of
``metrics.csv``: the steps alone), median over rounds, and the compile time is the first
epoch's extra. The long benches use ``--compile`` where the ratio is 1.2 or more (issue 35).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

NETWORKS = {"FER_V1": ["--arch", "FER_V1", "--init_channels", "8", "--layers", "5", "--optimizer", "sgd",
                       "--learning_rate", "0.025"],
            "cnn_gap": ["--arch", "cnn_gap", "--optimizer", "adam", "--learning_rate", "0.002", "--weight_decay", "0",
                        "--augment", "light"]}


def one_run(arch: str, compiled: bool, size: int, epochs: int, folder: Path) -> list[float]:
    """The step time of each epoch (seconds) of one training run."""
    from nas.apps import train
    from nas.runtime.checkpoint import read_csv_rows

    argv = [*NETWORKS[arch], "--synth_size", str(size), "--synth_public_size", "200", "--synth_private_size", "200",
            "--synth_noise", "0", "--epochs", str(epochs), "--batch_size", "64", "--device", "cpu", "--save",
            str(folder), "--plots", "False", "--progress", "False", "--snapshot_at", ""]
    if compiled:
        argv.append("--compile")
    train.main(train.get_args_parser().parse_args(argv))
    return [float(r["time_s"]) for r in read_csv_rows(folder / "metrics.csv")]


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/compile_epoch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="cnn_gap,FER_V1", help=f"networks, comma-separated: {', '.join(NETWORKS)}")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first holds the compilation)")
    p.add_argument("--size", type=int, default=3000, help="SynthFER images (Training 80 %%)")
    p.add_argument("--rounds", type=int, default=2, help="eager/compiled pairs per network, in turns")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from nas.runtime.errors import FerNasError

    archs = [a for a in args.archs.split(",") if a]
    bad = [a for a in archs if a not in NETWORKS]
    if bad or args.epochs < 2 or args.rounds < 1 or args.size < 10:
        raise FerNasError(f"--archs {args.archs} --epochs {args.epochs} --rounds {args.rounds} --size {args.size}: "
                          f"networks from {', '.join(NETWORKS)}, at least 2 epochs, 1 round, 10 images")
    out: dict[str, Any] = {"bench": "compile_epoch", "threads": torch.get_num_threads(), "networks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            eager, comp = [], []
            for r in range(args.rounds):
                for compiled in ((False, True) if r % 2 == 0 else (True, False)):  # ABBA
                    times = one_run(arch, compiled, args.size, args.epochs, Path(tmp) / f"{arch}-{r}-{compiled}")
                    (comp if compiled else eager).append(times)
            later = lambda runs: statistics.median(t for run in runs for t in run[1:])  # noqa: E731
            first = lambda runs: statistics.median(run[0] for run in runs)  # noqa: E731
            out["networks"][arch] = {
                "eager_epoch_s": round(later(eager), 2), "compiled_epoch_s": round(later(comp), 2),
                "ratio": round(later(eager) / later(comp), 3),
                "compile_s": round(first(comp) - first(eager), 1),
                "eager_runs": eager, "compiled_runs": comp}
    out["use_compile"] = {a: v["ratio"] >= 1.2 for a, v in out["networks"].items()}
    return emit(out, args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
