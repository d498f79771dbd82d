"""`smallmind profile` (being built)."""

from ..errors import SmallMindError


def add_parser(sub):
    p = sub.add_parser("profile", help="profile (being built)")
    p.set_defaults(run=run)


def run(args):
    raise SmallMindError("'profile' is not built yet")
