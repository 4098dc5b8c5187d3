"""Search a cell on FER data (SGAS or DARTS) and export its genotype.
``fernas search``; see docs/search.md.

    python search.py --batch_size 24 --data fer2013.csv --export MY_CELL
"""
from nas.apps.search import cli, get_args_parser, main  # noqa: F401 - get_args_parser/main for code that imports the script

if __name__ == "__main__":
    cli()
