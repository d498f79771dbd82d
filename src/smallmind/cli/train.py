"""`smallmind train` (being built)."""

from ..errors import SmallMindError


def add_parser(sub):
    p = sub.add_parser("train", help="train (being built)")
    p.set_defaults(run=run)


def run(args):
    raise SmallMindError("'train' is not built yet")
