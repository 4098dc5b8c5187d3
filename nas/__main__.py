"""``python -m nas <command>``: the ``fernas`` command line."""
from nas.apps import main

main(prog="python -m nas")
