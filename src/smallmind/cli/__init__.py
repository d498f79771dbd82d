"""The `smallmind` command. Each subcommand lives in its own module here with
`add_parser(subparsers)`; errors a user can fix become one line and exit code 2."""

import argparse
import importlib
import os
import sys

from ..errors import SmallMindError

COMMANDS = ("train", "generate", "chat", "serve", "inspect", "bench", "profile", "doctor", "export",
            "quantize", "perplexity")


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
    stdout = sys.stdout
    sys.stdout = _CheckedOutput(stdout)
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a failing write surfaces here, not at interpreter exit
        return code
    except SmallMindError as e:
        if isinstance(e, OutputError):
            _drop_stdout()
        print(f"smallmind {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smallmind {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head -1`): nothing more to say, and no one to say it to
        _drop_stdout()
        return 0
    except MemoryError:
        print(f"smallmind {args.command}: error: out of memory; try smaller sizes", file=sys.stderr)
        return 2
    except OSError as e:  # one the command did not turn into a SmallMindError itself
        where = f" ({e.filename})" if e.filename else ""
        print(f"smallmind {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout


class OutputError(SmallMindError):
    """Standard output cannot be written (a full disk, /dev/full)."""


class _CheckedOutput:
    """sys.stdout while a command runs: a failing write or flush raises OutputError, so it is
    told apart from the errors of files the command reads (a closed pipe stays BrokenPipeError)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write the output: {e.strerror or e}") from None

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write the output: {e.strerror or e}") from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _drop_stdout() -> None:
    # Python flushes stdout once more at exit; pointing it at /dev/null keeps that flush from
    # failing again with an "Exception ignored" message
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a descriptor
        pass


MMAP_HELP = ("use a GGUF file's weights in place from its read-only memory map (shared with other "
             "processes, nothing copied) instead of reading them into memory on huge pages")


def add_mmap(p) -> None:
    p.add_argument("--mmap", action="store_true", help=MMAP_HELP)


def mmap_choice(args) -> bool | None:
    """load()'s mmap argument for the --mmap flag: True when given, else None (load decides)."""
    return True if getattr(args, "mmap", False) else None


THREADS_HELP = ("thread budget for BLAS and native kernels (default: the CPUs this process may use; "
                "more than that is reduced to it, with a note on stderr)")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_budget(requested: int | None, command: str) -> int | None:
    """--threads as it will be used: above the CPUs this process may use, reduced to them
    (more threads than cores only fight each other), with a one-line note on stderr."""
    if requested is None:
        return None
    from ..kernels import MAX_THREADS

    usable = min(usable_cpus(), MAX_THREADS)
    if requested > usable:
        print(f"smallmind {command}: note: --threads {requested} is more than the {usable} CPUs this process "
              f"may use; using {usable}", file=sys.stderr)
        return usable
    return requested


def set_thread_budget(requested: int | None, command: str) -> None:
    """Apply --threads (see thread_budget) to BLAS and the native kernels."""
    threads = thread_budget(requested, command)
    if threads is not None:
        from .. import kernels

        kernels.set_threads(threads)


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
