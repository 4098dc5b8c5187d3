"""Ensemble trained checkpoints: weights and selection on PublicTest, scored on PrivateTest.
``fernas ensemble``; see docs/ensembles-and-cross-dataset.md.

    python ensemble.py --model_names runs/a,runs/b,runs/c --data fer2013.csv
"""
from nas.apps.ensemble import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
