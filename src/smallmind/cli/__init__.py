"""The `smallmind` command. Each subcommand lives in its own module here with
`add_parser(subparsers)`; errors a user can fix become one line and exit code 2."""

import argparse
import importlib
import sys

from ..errors import SmallMindError

COMMANDS = ("train", "generate", "chat", "inspect", "bench", "profile", "doctor", "export", "quantize", "perplexity")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="smallmind", description="Small language models on an ordinary CPU.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SmallMindError as e:
        print(f"smallmind {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smallmind {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def bounded_float(low: float, high: float, *, low_open=False):
    """argparse type for a float in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (value > low if low_open else value >= low) and value <= high and value == value
        if not ok:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"expected a number in {bracket}{low}, {high}], got {text!r}")
        return value

    return parse
