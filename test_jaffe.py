"""JAFFE cross-dataset test: direct, or leave-one-subject-out fine-tuning.
``fernas jaffe``; see docs/ensembles-and-cross-dataset.md.

    python test_jaffe.py --checkpoint runs/train-FER_V1-.../best.pt --data jaffe/ --finetune loso
"""
from nas.apps.jaffe import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
