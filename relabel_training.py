"""Continue training from a snapshot while relabelling suspicious labels.
``fernas relabel``; see docs/relabelling.md.

    python relabel_training.py --fes True --checkpoint runs/train-FER_V1-.../snapshot_train85.pt --data fer2013.csv
"""
from nas.apps.relabel import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
