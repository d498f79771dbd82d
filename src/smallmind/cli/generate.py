"""`smallmind generate` (being built)."""

from ..errors import SmallMindError


def add_parser(sub):
    p = sub.add_parser("generate", help="generate (being built)")
    p.set_defaults(run=run)


def run(args):
    raise SmallMindError("'generate' is not built yet")
