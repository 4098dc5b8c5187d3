"""Cross-dataset test on CK+48: 10-fold cross-validation, fine-tuning a copy of a checkpoint
on each fold's training part and testing on the held-out part.

    python test_ck48.py --checkpoint runs/train-FER_V1-.../best.pt --data CK+48
    python test_ck48.py --checkpoint RUN --data CK+48 --protocol reference      # the reference's split
    python test_ck48.py --checkpoint RUN --data CK+48 --no_finetune             # direct test
    torchrun --nproc_per_node 2 test_ck48.py --checkpoint RUN --data CK+48      # DDP fine-tuning
    python test_ck48.py --resume runs/ck48-20240101-120000                      # finish an interrupted run

Folds are subject-independent by default (no subject on both sides; seeded, balanced
by size and class mix); ``--protocol reference`` reproduces the reference's contiguous
per-class blocks of 12/18/9/21/9/24/6 images. The fine-tuning defaults are the
reference's (60 epochs, learning rate 0.01794073, batch 64); the held-out part is
never used for selection (the last epoch is scored). Contempt takes index 6; with
``--head keep`` the checkpoint's neutral unit becomes contempt's. Writes folds.csv
(fold, n_train, n_test, test subjects, accuracy), results.json (mean ± std over folds),
confusion.csv/.png over all folds, fold_XX/ run folders, config.yaml and log.txt into
``--save`` (default runs/ck48-<timestamp>).
"""
from __future__ import annotations

import argparse

from nas.cli import ArgumentParser, run


def get_args_parser() -> argparse.ArgumentParser:
    from nas.crossdata import add_crossdata_args

    p = ArgumentParser(prog="test_ck48.py", description="10-fold cross-validation of a checkpoint on CK+48 "
                       "(fine-tuning per fold, or a direct test); subject-independent folds by default.")
    return add_crossdata_args(p, kind="ck48")


def main(args: argparse.Namespace) -> dict:
    from nas.crossdata import main_crossdata

    return main_crossdata(args, "ck48")


if __name__ == "__main__":
    run(main, get_args_parser())
