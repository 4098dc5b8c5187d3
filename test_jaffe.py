"""Cross-dataset test on JAFFE: a direct test of a checkpoint, or leave-one-subject-out
fine-tuning over the 10 posers.

    python test_jaffe.py --checkpoint runs/train-FER_V1-.../best.pt --data jaffe/
    python test_jaffe.py --checkpoint RUN --data jaffe/ --finetune loso
    python test_jaffe.py --checkpoint RUN --data jaffe/ --jaffe_crop 40,40,176,176    # another face box

Labels come from the expression code in each file name (KA.AN1.39.tiff -> angry), mapped
by name into FER2013's order, never by the alphabetical order of folders (which put
neutral, sad and surprise at the wrong indices in the reference). A direct test scores
every image with the checkpoint as it is; ``--finetune loso`` fine-tunes a copy on nine
subjects and tests on the tenth, for each subject (reference recipe: 60 epochs, learning
rate 0.01794073, batch 64; the last epoch is scored). Writes subjects.csv (subject,
n_train, n_test, accuracy), results.json (mean ± std over subjects and the pooled
accuracy), confusion.csv/.png, config.yaml and log.txt into ``--save`` (default
runs/jaffe-<timestamp>).
"""
from __future__ import annotations

import argparse

from nas.cli import ArgumentParser, run


def get_args_parser() -> argparse.ArgumentParser:
    from nas.crossdata import add_crossdata_args

    p = ArgumentParser(prog="test_jaffe.py", description="Test a checkpoint on JAFFE: direct test, or "
                       "leave-one-subject-out fine-tuning (--finetune loso).")
    return add_crossdata_args(p, kind="jaffe")


def main(args: argparse.Namespace) -> dict:
    from nas.crossdata import main_crossdata

    return main_crossdata(args, "jaffe")


if __name__ == "__main__":
    run(main, get_args_parser())
