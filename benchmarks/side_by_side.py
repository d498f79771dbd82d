"""Each side of a comparison in its own long-lived worker process, asked in turn.

Two libraries' thread pools in one process slow each other (PyTorch's OpenMP threads and
OpenBLAS's, or our pool, spin after their work and hold the cores the other side wants), so a
benchmark runs each side in a worker process of its own: the parent sends one JSON request
per line on the worker's stdin and reads one JSON line back, so repetitions interleave.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a bad one is a one-line usage error). The
    CLI has its own; importing smallmind.cli here would start SmallMind's kernel pool inside
    the PyTorch workers that import this file."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a bad one is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number above 0")
    return value


def parse_model_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line of a benchmark that takes --model (a path, default the script's
    own choice) and --threads (the kernels' thread budget), both added here: a path that does
    not exist is a one-line usage error; the thread budget is applied before returning."""
    p.add_argument("--threads", type=positive_int, default=None, help="the kernels' thread budget")
    args = p.parse_args()
    if args.model is not None and not Path(args.model).exists():
        p.error(f"no model at {args.model}")
    if args.threads is not None:
        from smallmind import kernels

        kernels.set_threads(args.threads)
    return args


def preset_names() -> list[str]:
    """The trainable GPT's presets, for an argparse choices list."""
    from smallmind.models.gpt import PRESETS

    return list(PRESETS)


class Worker:
    """A worker process: `script --worker SIDE *args`, answering a {"ready": ...} line first."""

    def __init__(self, script, side, args):
        self.side = side
        self.proc = subprocess.Popen([sys.executable, str(script), "--worker", side, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            raise RuntimeError(f"the {side} worker did not start (see its error above)")
        self.ready = json.loads(line)

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def call_times(fn, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), after one call that is not timed (first-call
    costs: page faults, pool start-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def settle(limit: float = 1.0, window: float = 0.010, idle: float = 0.0005) -> float:
    """Wait until this process's threads have stopped using the CPU (at most `limit` seconds);
    return the seconds waited.

    A library's worker threads keep spinning after its work (PyTorch's OpenMP threads, measured
    on this project's machines, kept a core busy for 10-13 ms after each parallel product). In
    an interleaved comparison that spin would take a core from the other side's next turn, so
    each worker answers only once it is quiet: every turn starts on idle cores. The kernel adds
    a running thread's time to the process clock at its scheduler ticks (4 ms apart at 250 Hz),
    so a window must span more than one tick to see a spinning thread."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        before = time.process_time()
        time.sleep(window)
        if time.process_time() - before < idle:
            break
    return time.perf_counter() - start


def serve(handler, ready: dict) -> None:
    """The worker's loop: announce `ready`, then answer each request line with handler(request),
    once this process is quiet (settle()), with the wait in the answer's `settle_ms`."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        answer = handler(json.loads(line))
        answer["settle_ms"] = settle() * 1e3
        print(json.dumps(answer), flush=True)


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (a VM may name it vaguely:
    "AMD EPYC" family 25 model 1 is Zen 3) and its widest float32 vector ISA."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2+FMA" if "avx2" in flags else "no AVX2"
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        isa += " with BF16"
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}, {isa})")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
