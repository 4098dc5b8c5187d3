"""``python -m nas.data inspect PATH``: the entry point of ``fernas inspect PATH``."""
import sys

from nas.apps.inspect import cli

if sys.argv[1:2] != ["inspect"]:
    print("usage: python -m nas.data inspect PATH [options]  (the same as: fernas inspect PATH)", file=sys.stderr)
    sys.exit(2)
cli(sys.argv[2:], prog="python -m nas.data inspect")
