"""Retrain a searched cell (or a baseline network) from scratch, with honest model selection.

    python train_searched.py --arch FER_V1 --layers 12 --data fer2013.csv
    python train_searched.py --dataset synthfer --arch FER_V1 --init_channels 16 --layers 8 --epochs 5
    torchrun --nproc_per_node 4 train_searched.py --arch FER_V1 --data fer2013.csv   # DDP
    python train_searched.py --resume runs/train-FER_V1-20240101-120000            # continue exactly

Writes config.yaml, log.txt, metrics.csv, last.pt, best.pt (best PublicTest accuracy),
snapshot_train85.pt / snapshot_train90.pt, results.json (PrivateTest at the selected
epoch) and PNG reports into the run directory (``--save``).
"""
from __future__ import annotations

import argparse
import time

from nas.cli import ArgumentParser, run


def get_args_parser() -> argparse.ArgumentParser:
    from nas.data import add_data_args
    from nas.train import add_train_args

    p = ArgumentParser(prog="train_searched.py", description="Train a genotype or baseline network from scratch "
                       "(auxiliary head, drop-path, cutout); select on PublicTest, report PrivateTest.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    p.add_argument("--arch", default="FER_V1", help="genotype name, genotype .json file, or baseline name")
    p.add_argument("--init_channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--auxiliary", dest="auxiliary", action="store_true", default=True,
                   help="auxiliary head (default on)")
    p.add_argument("--no_auxiliary", dest="auxiliary", action="store_false", help="no auxiliary head")
    add_data_args(p)
    add_train_args(p)
    return p


def main(args: argparse.Namespace) -> dict:
    from nas.checkpoint import RunDir
    from nas.data import open_data_from_args
    from nas.distributed import broadcast_object, cleanup, init_distributed
    from nas.models import build_model
    from nas.train import Trainer, config_from_args, resumed_args, write_run_report
    from nas.utils import resolve_device, seed_everything

    if args.resume:
        args = resumed_args(args)
    if args.labels != "fer" and not args.ferplus:
        from nas.errors import FerNasError

        raise FerNasError(f"--labels {args.labels} needs --ferplus PATH (the FER+ votes file fer2013new.csv)")
    device = resolve_device(args.device)
    dist = init_distributed(device)
    try:
        if args.save is None and not args.resume:
            stamp = broadcast_object(time.strftime("%Y%m%d-%H%M%S"))  # one folder for all ranks
            args.save = f"runs/train-{_safe(args.arch)}-{stamp}"
        run_dir = RunDir(args.resume or args.save, resume=bool(args.resume), force=args.force, enabled=dist.is_main)
        seed_everything(args.seed)
        data = open_data_from_args(args)
        model = build_model(args.arch, num_classes=len(data.classes), init_channels=args.init_channels,
                            layers=args.layers, auxiliary=args.auxiliary, in_channels=int(data.images.shape[1]),
                            drop_path_prob=args.drop_path_prob)
        if dist.enabled:  # same initial weights everywhere, different dropout/drop-path masks per rank
            import torch

            torch.manual_seed(args.seed + 1_000_003 * dist.rank)
        trainer = Trainer(model, data, config_from_args(args), run_dir, dist=dist, args=vars(args))
        if args.resume:
            trainer.resume(args.resume)
        else:  # only real flags, so that the file works as --config for a new run
            flags = {a.dest for a in get_args_parser()._actions} - {"help", "config"}
            run_dir.write_config({k: v for k, v in vars(args).items() if k in flags})
        results = trainer.fit()
        if dist.is_main and args.plots:
            for p in write_run_report(run_dir, data, device=dist.device):
                run_dir.log(f"  wrote {p.name}", echo=False)
        return results
    finally:
        cleanup()


def _safe(name: str) -> str:
    from pathlib import Path

    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(str(name)).stem) or "arch"


if __name__ == "__main__":
    run(main, get_args_parser())
