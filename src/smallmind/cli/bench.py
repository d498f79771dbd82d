"""`smallmind bench` (being built)."""

from ..errors import SmallMindError


def add_parser(sub):
    p = sub.add_parser("bench", help="bench (being built)")
    p.set_defaults(run=run)


def run(args):
    raise SmallMindError("'bench' is not built yet")
