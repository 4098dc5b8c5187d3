"""Continue training from a snapshot while relabelling suspicious labels (Auto-FERNet stage 3).

    python relabel_training.py --checkpoint runs/train-FER_V1-.../snapshot_train85.pt --data fer2013.csv
    python relabel_training.py --checkpoint SNAP.pt --fes False                 # no FES gate
    python relabel_training.py --checkpoint SNAP.pt --no_relabel                # control: continued training
    python relabel_training.py --checkpoint SNAP.pt --dataset synthfer --synth_size 3000 --synth_noise 0.3
    torchrun --nproc_per_node 4 relabel_training.py --checkpoint SNAP.pt --data fer2013.csv   # DDP
    python relabel_training.py --resume runs/relabel-FER_V1-20240101-120000                   # continue exactly

The model (architecture, genotype, layers, normalisation, input size) comes from the
checkpoint; the drop-path schedule continues where it left off. Epoch 0 trains on the
given labels; from then on a label becomes the prediction when 0 < p_pred - p_label <
--relabel_threshold and, with --fes True, FES[label][pred] > --fes_threshold. Writes the
files of train_searched.py (config.yaml, log.txt, metrics.csv with relabelling columns,
last.pt, best.pt by PublicTest, results.json with PrivateTest at the selected epoch, PNG
reports) plus relabel_transitions.csv and relabel.png.
"""
from __future__ import annotations

import argparse

from nas.cli import ArgumentParser, run


def get_args_parser() -> argparse.ArgumentParser:
    from nas.data import add_data_args
    from nas.relabel_training import REFERENCE_DEFAULTS, add_relabel_args
    from nas.train import add_train_args

    p = ArgumentParser(prog="relabel_training.py", description="Continue training a checkpoint with FES-gated "
                       "relabelling; select on PublicTest, report PrivateTest.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    add_relabel_args(p)
    add_data_args(p)
    # drop_path_prob None: the checkpoint's; no snapshots (this run starts from one)
    add_train_args(p, **REFERENCE_DEFAULTS, drop_path_prob=None, snapshot_at=[])
    return p


def main(args: argparse.Namespace) -> dict:
    from nas.relabel_training import relabel_main

    return relabel_main(args)


if __name__ == "__main__":
    run(main, get_args_parser())
