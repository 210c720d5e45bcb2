"""``unideploy`` entry point: parses, dispatches to a subcommand, maps UnideployError to one line + exit 1.

SIGINT (Ctrl-C) and SIGTERM stop a subcommand cleanly (:mod:`unideploy.core.interrupts`): the command's outputs are
left complete or absent, its threads and runtimes are released, and one line says how many items were done; the
exit status is 130 for SIGINT and 143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

#: subcommand -> module in unideploy.cli providing ``add_parser(subparsers)`` and ``run(args) -> int``
COMMANDS = {
    "predict": "predict",
    "track": "track",
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


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (flag, expected, given) and exit status 1, as
    every other user error (the house style: one red line, exit 1)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse's hook
        self.exit(1, _red(f"error: {message} (see '{self.prog} --help')") + "\n")


#: flags every subcommand takes, before or after its name: (flags, dest, help)
GLOBAL_FLAGS = (
    (("--debug",), "debug", "show tracebacks for errors and third-party log output"),
    (("-q", "--quiet"), "quiet", "print only results and errors: no progress, notes or summaries"),
    (("-v", "--verbose"), "verbose", "print more: a line per image, third-party log output"),
)


def _add_global_flags(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (a subcommand) the global flags it lacks; unset, they leave the top-level values alone."""
    for flags, dest, help_ in GLOBAL_FLAGS:
        free = [f for f in flags if f not in parser._option_string_actions]
        if len(free) == len(flags):
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS, help=help_)
        elif free:  # the subcommand has --quiet of its own: add the short spelling to it
            parser.add_argument(*free, dest=dest, action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
    for action in parser._actions:  # nested subcommands (pipeline run|check|eval)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_global_flags(child)


def build_parser() -> argparse.ArgumentParser:
    from unideploy import __version__

    parser = Parser(
        prog="unideploy",
        description="Deploy vision models on any inference runtime: predict, eval, compare, bench, export.",
        epilog="examples:\n  unideploy demo\n  unideploy predict model.onnx images/ --save-json preds.json\n"
               "  unideploy eval model.onnx --data val/data.yaml\n\nrun 'unideploy COMMAND --help' for a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unideploy {__version__}")
    for flags, dest, help_ in GLOBAL_FLAGS:  # "global_" dests: a subcommand's own --quiet default must not win
        parser.add_argument(*flags, dest=f"global_{dest}", action="store_true", help=help_)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f".{module}", __package__).add_parser(sub)
    for child in sub.choices.values():
        _add_global_flags(child)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; the global flags are set whether given before or after the subcommand."""
    args = build_parser().parse_args(argv)
    for _flags, dest, _help in GLOBAL_FLAGS:
        setattr(args, dest, bool(getattr(args, dest, False) or getattr(args, f"global_{dest}")))
    if args.debug:
        args.verbose = True
    return args


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
    args = parse_args(argv)
    if not args.command:
        build_parser().print_help()
        return 0
    from unideploy.core.errors import UnideployError
    from unideploy.core.interrupts import exit_status, handle_signals, interrupted_line

    try:
        with handle_signals():
            try:
                return int(args.func(args) or 0)
            except UnideployError as e:
                if args.debug:
                    raise
                progress = getattr(e, "progress", None)
                done = f"; {progress.describe()}" if progress is not None and progress.done else ""
                print(_red(f"error: {as_flag(e)}{done}"), file=sys.stderr)
                return 1
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        print(_red(interrupted_line(e)), file=sys.stderr)
        return exit_status(e)


if __name__ == "__main__":
    sys.exit(main())
