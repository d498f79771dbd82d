"""`smallmind perplexity [--model PATH] [--data FILE] [--ctx N] [--json]`: perplexity of a model
on a text in windows of the context, as llama.cpp's perplexity tool computes it (the second
half of each window scored). Default text: the held-out (validation) part of this Python's
standard-library source, the split `smallmind train` holds out of its default data."""

import json
import sys

from . import add_mmap, mmap_choice, positive_int

DEFAULT_CTX = 512  # llama.cpp's perplexity default


def add_parser(sub):
    p = sub.add_parser("perplexity", help="perplexity of a model on a text, as llama.cpp's perplexity tool reports it")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a GGUF file or a checkpoint directory (default: Gemma 3 270M)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="UTF-8 text file or directory (default: the held-out part of this Python's stdlib source)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help=f"window size in tokens (default: the smaller of the model's context and {DEFAULT_CTX})")
    p.add_argument("--chunks", type=positive_int, default=None, metavar="N",
                   help="evaluate at most N windows (default: all that fit the text)")
    p.add_argument("--threads", type=positive_int, help="thread budget for BLAS and native kernels")
    p.add_argument("--json", action="store_true", help="end with one JSON object (perplexity, tokens, ...)")
    add_mmap(p)
    p.set_defaults(run=run)


def held_out_text(path=None) -> str:
    """The text of `path` (a file or directory), or the validation split of the stdlib corpus."""
    from ..formats.text_data import load_documents, split_documents

    docs = load_documents(path)
    return "".join(d.text for d in docs) if path is not None else split_documents(docs)[1]


class ProgressBar:
    """A tqdm bar on stderr (shown on a terminal only), made when the total is known."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="window", file=sys.stderr, disable=None, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def measure(model, text: str, ctx: int | None, chunks: int | None, desc: str = "perplexity"):
    from ..runtime.perplexity import perplexity

    bar = ProgressBar(desc)
    try:
        return perplexity(model, text, ctx or min(DEFAULT_CTX, model.context_length), chunks=chunks, progress=bar)
    finally:
        bar.close()


def run(args):
    from .. import kernels
    from ..runtime.model import load

    if args.threads is not None:
        kernels.set_threads(args.threads)
    model = load(args.model, mmap=mmap_choice(args))
    result = measure(model, held_out_text(args.data), args.ctx, args.chunks)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"perplexity {result.perplexity:.4f} +/- {result.uncertainty:.5f}  ({result.tokens:,} tokens scored "
              f"in {result.chunks} windows of {result.ctx})")
    return 0
