"""Shared command-line plumbing: one-line errors, YAML configs, booleans.

Every script is ``get_args_parser()`` + ``main(args)`` and ends with
``nas.runtime.cli.run(main, get_args_parser())``, which turns :class:`FerNasError`
into one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from nas.runtime.errors import FerNasError, RunInterrupted

__all__ = ["ArgumentParser", "config_flag_adder", "fmt_pct", "str2bool", "int_list", "float_list", "parse_args", "run", "load_yaml_config"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Exit with status 2 and the message on one line (argparse's usage block is left out)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def str2bool(value: str | bool) -> bool:
    """A real boolean flag value: ``--fes False`` means False (unlike ``type=bool``)."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def int_list(value: str) -> list[int]:
    """``"85,90"`` -> ``[85, 90]``; an empty string gives ``[]``."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def float_list(value: str) -> list[float]:
    """``"0.5,1"`` -> ``[0.5, 1.0]``."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of flag values with ``yaml.safe_load`` (never runs code)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FerNasError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FerNasError(f"{p}: config is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise FerNasError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', None) or 'parse error'})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise FerNasError(f"{p}: config must be a mapping of flag names to values")
    return data


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE.yaml`` (if the parser has it) act as
    defaults that explicit command-line flags override. Unknown or ill-typed keys in
    the file are one-line errors naming the file and key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    has_config = any("--config" in a.option_strings for a in parser._actions)
    if has_config:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(argv)
        if known.config:
            try:
                cfg = load_yaml_config(known.config)
            except FerNasError as e:
                parser.exit(2, f"{parser.prog}: error: {e}\n")
            actions = {a.dest: a for a in parser._actions}
            defaults: dict[str, Any] = {}
            for key, value in cfg.items():
                dest = key.replace("-", "_")
                if dest not in actions or dest in ("help", "config"):
                    parser.exit(2, f"{parser.prog}: error: {known.config}: unknown key {key!r}\n")
                action = actions[dest]
                try:
                    defaults[dest] = _coerce(action, value)
                except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                    parser.exit(2, f"{parser.prog}: error: {known.config}: key {key!r}: {' '.join(str(e).split())}\n")
            parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _coerce(action: argparse.Action, value: Any) -> Any:
    """Convert a YAML value the way argparse would convert the same text."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, list):
        if action.type in (int_list, float_list):
            return action.type(",".join(str(v) for v in value))
        if action.nargs in ("*", "+") or isinstance(action.nargs, int):
            return [action.type(str(v)) if action.type else v for v in value]
        raise TypeError(f"a list is not valid here: {value!r}")
    if isinstance(value, dict):
        raise TypeError("a mapping is not valid here")
    text = value if isinstance(value, str) else ("True" if value is True else "False" if value is False else str(value))
    out = action.type(text) if action.type else text
    if action.choices is not None and out not in action.choices:
        raise ValueError(f"invalid choice {out!r} (choose from {', '.join(map(str, action.choices))})")
    return out


def run(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> None:
    """Parse flags, call ``main(args)``; turn user faults into one line and exit 2.

    Training loops catch SIGINT/SIGTERM themselves (:class:`nas.engine.loop.GracefulStop`),
    save ``last.pt`` at a step boundary and raise :class:`RunInterrupted`.
    """
    args = parse_args(parser, argv)
    try:
        main(args)
    except FerNasError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except RunInterrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader of stdout went away (``| head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except _oom_types() as e:  # noqa: B030 - computed tuple of exception classes
        print(f"{parser.prog}: error: out of GPU memory ({' '.join(str(e).split())[:120]}); "
              "try a smaller --batch_size or --partial_channels", file=sys.stderr)
        sys.exit(3)


def _oom_types() -> tuple[type[BaseException], ...]:
    try:
        import torch

        return (torch.cuda.OutOfMemoryError,)
    except Exception:  # pragma: no cover - torch is a hard dependency
        return ()


def fmt_pct(v: object, digits: int = 2, unit: str = "%") -> str:
    """A percentage for a printed line: ``v`` with ``digits`` decimals and ``unit``, or ``n/a``
    when it is missing (None, an empty CSV cell, NaN or not a number)."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}{unit}"


def config_flag_adder(group: argparse._ArgumentGroup, config: type, overrides: Mapping[str, Any] | None = None,
                      skip: Iterable[str] = ()) -> Callable[..., None]:
    """``add(*flags, **kw)`` for ``group``: a flag named like a field of the dataclass ``config``
    takes that field's default (the defaults are written once, on the dataclass); ``overrides``
    replaces a default for one stage; a flag in ``skip`` (already on the parser) is left out."""
    import dataclasses

    defaults = {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
                for f in dataclasses.fields(config)}
    overrides, skip = dict(overrides or {}), set(skip)

    def add(*flags: str, **kw: Any) -> None:
        if any(f in skip for f in flags):
            return
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if dest in overrides:
            kw["default"] = overrides[dest]
        elif dest in defaults and "default" not in kw and kw.get("action") != "store_true":
            kw["default"] = defaults[dest]
        group.add_argument(*flags, **kw)

    return add
