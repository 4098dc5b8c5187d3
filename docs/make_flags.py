"""Write the flag tables of the docs from the commands' own parsers.

    python docs/make_flags.py            # rewrite every <!-- flags: CMD --> ... <!-- /flags --> block
    python docs/make_flags.py --check    # exit 1 (and name the blocks) when a table has drifted

A block names a ``fernas`` command (``nas.apps.COMMANDS``); its table lists every flag of
that command's ``get_args_parser()`` by argument group: the flag (and its aliases), the
default, and the help text. ``tests/test_docs.py`` runs ``--check``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"(<!-- flags: (?P<cmd>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /flags -->)", re.S)


def _default(action: argparse.Action) -> str:
    d = action.default
    if isinstance(action, argparse._StoreFalseAction):
        return ""  # the negative of another flag, whose row shows the default
    if isinstance(action, argparse._StoreTrueAction):
        return "off" if d is False else "on"
    if d is None or d == argparse.SUPPRESS:
        return ""
    if isinstance(d, (list, tuple)):
        return ",".join(str(x) for x in d) if d else "(none)"
    return str(d)


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest}` (positional)"
    names = " / ".join(f"`{o}`" for o in action.option_strings)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        names += " {" + ",".join(map(str, action.choices)) + "}"
    return names


def table(command: str) -> str:
    """The Markdown table of ``fernas COMMAND``'s flags."""
    from nas.apps import COMMANDS

    parser = COMMANDS[command][0].get_args_parser()
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title if group.title not in ("options", "optional arguments", "positional arguments") else ""
        if title:
            lines.append(f"| **{title}** | | |")
        for a in actions:
            text = (a.help or "").replace("%%", "%").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {_flag(a)} | {_default(a).replace('|', chr(92) + '|')} | {text} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("cmd")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only report drift (exit 1), write nothing")
    args = p.parse_args(argv)
    stale = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        old = path.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"flag tables out of date in {', '.join(map(str, stale))}: run python docs/make_flags.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"rewrote {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
