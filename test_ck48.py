"""CK+48 cross-dataset test: 10 subject-independent folds, fine-tuned or direct.
``fernas ck48``; see docs/ensembles-and-cross-dataset.md.

    python test_ck48.py --checkpoint runs/train-FER_V1-.../best.pt --data CK+48
"""
from nas.apps.ck48 import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
