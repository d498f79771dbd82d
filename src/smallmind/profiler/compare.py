"""Two profile.json files side by side: headline deltas and per-scope changes, regressions flagged."""

import json
import math
from pathlib import Path

from ..errors import SmallMindError
from .report import HEADLINE_KEYS, _fmt, table

# Which way is better for each headline figure.
HIGHER_IS_BETTER = {"prefill_tok_s", "decode_tok_s", "matmul_gflops", "train_tok_s"}
REGRESSION_PCT = 5.0


def load_profile(path) -> dict:
    """Read a profile.json; anything that is not one -> SmallMindError naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmallMindError(f"cannot read profile {path}: no such file") from None
    except IsADirectoryError:
        raise SmallMindError(f"cannot read profile {path}: it is a directory, not a profile.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SmallMindError(f"cannot read profile {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise SmallMindError(f"cannot read profile {path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("kind") != "smallmind-profile":
        raise SmallMindError(f"cannot read profile {path}: not a smallmind profile.json")
    headline, scopes = data.get("headline"), data.get("scopes")
    if not isinstance(headline, dict) or not isinstance(scopes, list):
        raise SmallMindError(f"cannot read profile {path}: missing its headline or scopes")
    for key in HEADLINE_KEYS:
        if not _is_number(headline.get(key)):
            raise SmallMindError(f"cannot read profile {path}: headline.{key} is missing or not a number")
    for i, row in enumerate(scopes):
        if not (isinstance(row, dict) and isinstance(row.get("name"), str)
                and all(_is_number(row.get(k)) for k in ("total_ms", "mean_ms", "calls", "pct"))):
            raise SmallMindError(f"cannot read profile {path}: scope {i} lacks name, total_ms, mean_ms, calls or pct")
    return data


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _change_pct(before: float, after: float) -> float | None:
    if before == 0:
        return None if after == 0 else math.inf
    return 100.0 * (after - before) / abs(before)


def compare(before: dict, after: dict) -> dict:
    """Headline and per-scope changes. A change is a regression when it is more than 5% worse:
    slower speed or GFLOPS, more time, bytes, memory or collections; per scope, a mean call time
    more than 5% longer. Training tokens/s is compared when both runs profiled training."""
    pairs = [(key, before["headline"][key], after["headline"][key]) for key in HEADLINE_KEYS]
    trained = [p.get("train") for p in (before, after)]
    if all(isinstance(t, dict) and _is_number(t.get("tok_s")) for t in trained):
        pairs.append(("train_tok_s", trained[0]["tok_s"], trained[1]["tok_s"]))
    headline = []
    for key, b, a in pairs:
        change = _change_pct(b, a)
        worse = None if change is None else (-change if key in HIGHER_IS_BETTER else change)
        headline.append({"name": key, "before": b, "after": a, "change_pct": change,
                         "regression": worse is not None and worse > REGRESSION_PCT})
    old = {r["name"]: r for r in before["scopes"]}
    new = {r["name"]: r for r in after["scopes"]}
    scopes = []
    for name in list(old) + [n for n in new if n not in old]:
        b, a = old.get(name), new.get(name)
        row = {"name": name, "before_ms": b and b["mean_ms"], "after_ms": a and a["mean_ms"],
               "before_pct": b and b["pct"], "after_pct": a and a["pct"], "change_pct": None,
               "regression": False, "status": "changed"}
        if b is None or a is None:
            row["status"] = "added" if b is None else "removed"
        else:
            row["change_pct"] = _change_pct(b["mean_ms"], a["mean_ms"])
            row["regression"] = row["change_pct"] is not None and row["change_pct"] > REGRESSION_PCT
        scopes.append(row)
    return {"headline": headline, "scopes": scopes,
            "regressions": [r["name"] for r in headline + scopes if r["regression"]]}


def _pct(change) -> str:
    if change is None:
        return "-"
    return f"{change:+.1f}%"


def render_comparison(result: dict, before_name: str, after_name: str) -> str:
    out = ["# SmallMind profile comparison", "", f"before: {before_name}  ", f"after: {after_name}", "",
           f"Regressions (more than {REGRESSION_PCT:.0f}% worse) are flagged **REGRESSION**.", "",
           "## Headline", ""]
    out += table(["measure", "before", "after", "change", ""],
                 [[h["name"], _fmt(h["before"]), _fmt(h["after"]), _pct(h["change_pct"]),
                   "**REGRESSION**" if h["regression"] else ""] for h in result["headline"]], "lrrrl")
    out += ["", "## Scopes (mean ms per call)", ""]
    out += table(["scope", "before ms", "after ms", "change", "before %", "after %", ""],
                 [[s["name"], _fmt(s["before_ms"], 4), _fmt(s["after_ms"], 4), _pct(s["change_pct"]),
                   _fmt(s["before_pct"], 1), _fmt(s["after_pct"], 1),
                   "**REGRESSION**" if s["regression"] else ("" if s["status"] == "changed" else s["status"])]
                  for s in result["scopes"]], "lrrrrrl")
    regressions = result["regressions"]
    out += ["", f"{len(regressions)} regression(s)" + (": " + ", ".join(regressions) if regressions else "")]
    return "\n".join(out) + "\n"
