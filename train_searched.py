"""Retrain a genotype or baseline from scratch; PublicTest selects, PrivateTest is the result.
``fernas train``; see docs/training.md.

    python train_searched.py --arch FER_V1 --layers 12 --data fer2013.csv
"""
from nas.apps.train import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
