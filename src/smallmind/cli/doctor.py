"""`smallmind doctor` (being built)."""

from ..errors import SmallMindError


def add_parser(sub):
    p = sub.add_parser("doctor", help="doctor (being built)")
    p.set_defaults(run=run)


def run(args):
    raise SmallMindError("'doctor' is not built yet")
