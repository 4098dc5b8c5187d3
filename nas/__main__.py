"""``python -m nas <command>``: entry point for toolkit-level commands (``demo``)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "nas.demo"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: python -m nas {demo} [options]", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"python -m nas: error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    import importlib

    module = importlib.import_module(commands[argv[0]])
    module.cli(argv[1:])


if __name__ == "__main__":
    main()
