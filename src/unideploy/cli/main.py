"""``unideploy`` entry point: parses, dispatches to a subcommand, maps UnideployError to one line + exit 1."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> module in unideploy.cli providing ``add_parser(subparsers)`` and ``run(args) -> int``
COMMANDS = {
    "predict": "predict",
    "bench": "bench",
    "compare": "compare",
    "preprocess": "preprocess",
    "infer": "infer",
    "postprocess": "postprocess",
    "pipeline": "pipeline",
    "serve": "serve",
    "eval": "eval",
    "demo": "demo",
    "export": "export",
    "quantize": "quantize",
}


def build_parser() -> argparse.ArgumentParser:
    from unideploy import __version__

    parser = argparse.ArgumentParser(
        prog="unideploy",
        description="Deploy vision models on any inference runtime: predict, eval, compare, bench, export.",
    )
    parser.add_argument("--version", action="version", version=f"unideploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f".{module}", __package__).add_parser(sub)
    return parser


#: Python argument -> command-line flag, where the two are spelt differently (others: ``max_det`` -> ``--max-det``)
FLAG_NAMES = {"agnostic": "agnostic-nms", "sha256": "model-sha256"}


def as_flag(err: Exception) -> Exception:
    """An :class:`~unideploy.core.errors.OptionError` as the command line spells it (``--conf``, not ``conf``)."""
    from unideploy.core.errors import OptionError

    if not isinstance(err, OptionError) or err.flag:
        return err
    return OptionError(FLAG_NAMES.get(err.option, err.option), err.problem).as_flag()


def _red(text: str) -> str:
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        return f"\033[31m{text}\033[0m"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from unideploy.core.errors import UnideployError

    try:
        return int(args.func(args) or 0)
    except UnideployError as e:
        if args.debug:
            raise
        print(_red(f"error: {as_flag(e)}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_red("interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
