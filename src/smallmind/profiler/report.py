"""The profile as data (profile.json), as a document (profile.md), as charts and as the printed
summary. profiler.run.run_profile assembles the dict; everything here only reads it."""

import json
import math
import os
from pathlib import Path

from .recorder import Recorder
from .roofline import bandwidth_fractions, roof_fraction

HEADLINE_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "forward_ms", "alloc_bytes_per_token",
                 "peak_rss_mb", "gc_collections", "matmul_gflops")


def scope_rows(recorder: Recorder, wall_ns: float, cost, peaks: dict) -> list[dict]:
    """One row per recorded path, depth first, with timing, share of wall time and roofline.

    kind: "container" (groups others), "operation" (outermost non-container: these rows
    partition the covered time) or "inner" (an operation's own sub-scope).
    cost(path, calls, forwards) -> total (flops, bytes) of the calls, or None where not
    modelled; forwards is the calls of the path's outermost scope (its phase: prefill, decode).
    A modelled row's GB/s is also given as a fraction of the measured DRAM and in-cache copy
    bandwidths (bw_fraction, cache_bw_fraction).
    """
    rows = []
    for node in recorder.nodes():
        ancestors = []
        parent = node.parent
        while parent is not None and parent.parent is not None:
            ancestors.append(parent)
            parent = parent.parent
        if node.is_container:
            kind = "container"
        elif all(a.is_container for a in ancestors):
            kind = "operation"
        else:
            kind = "inner"
        path = node.path
        total_ms = node.total_ns / 1e6
        row = {
            "name": path, "op": node.name, "depth": len(ancestors), "kind": kind,
            "total_ms": total_ms, "self_ms": node.self_ns / 1e6,
            "pct": 100.0 * node.total_ns / wall_ns if wall_ns > 0 else 0.0,
            "calls": node.calls, "mean_ms": total_ms / node.calls,
            "min_ms": node.min_ns / 1e6, "max_ms": node.max_ns / 1e6,
            "flops_per_call": None, "bytes_per_call": None,
            "gflops": None, "gbps": None, "roof_fraction": None, "bw_fraction": None, "cache_bw_fraction": None,
        }
        forwards = (ancestors[-1] if ancestors else node).calls
        modelled = None if kind == "container" else cost(path, node.calls, forwards)
        if modelled is not None and node.total_ns > 0:
            flops, moved = modelled
            seconds = node.total_ns / 1e9
            row.update(flops_per_call=flops / node.calls, bytes_per_call=moved / node.calls,
                       gflops=flops / seconds / 1e9, gbps=moved / seconds / 1e9,
                       roof_fraction=roof_fraction(flops, moved, seconds, peaks))
            row.update(bandwidth_fractions(row["gbps"], peaks))
        rows.append(row)
    return rows


def matmul_gflops(rows: list[dict]) -> float:
    """Achieved GFLOPS over every matmul.* scope together (total FLOPs / total time)."""
    flops = sum(r["flops_per_call"] * r["calls"] for r in rows
                if r["op"].startswith("matmul.") and r["flops_per_call"] is not None)
    seconds = sum(r["total_ms"] for r in rows
                  if r["op"].startswith("matmul.") and r["flops_per_call"] is not None) / 1e3
    return flops / seconds / 1e9 if seconds > 0 else 0.0


def by_operation(rows: list[dict]) -> list[dict]:
    """Operation rows summed by operation name over every path, largest first."""
    totals: dict[str, dict] = {}
    for r in rows:
        if r["kind"] != "operation":
            continue
        t = totals.setdefault(r["op"], {"op": r["op"], "total_ms": 0.0, "pct": 0.0, "calls": 0})
        t["total_ms"] += r["total_ms"]
        t["pct"] += r["pct"]
        t["calls"] += r["calls"]
    return sorted(totals.values(), key=lambda t: -t["total_ms"])


def furthest_from_roof(rows: list[dict], min_pct: float = 0.5) -> list[dict]:
    """Modelled scopes holding at least min_pct of the time, lowest roof fraction first."""
    modelled = [r for r in rows if r["roof_fraction"] is not None and r["pct"] >= min_pct]
    return sorted(modelled, key=lambda r: r["roof_fraction"])


# ---- the document ---------------------------------------------------------------------------

def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A Markdown table whose columns are padded, so it reads aligned as plain text too."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(values):
        parts = [v.ljust(w) if a == "l" else v.rjust(w) for v, w, a in zip(values, widths, align)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if a == "l" else ("-" * (w + 1) + ":")
                          for w, a in zip(widths, align)) + "|"
    return [line(headers), rule] + [line(r) for r in cells]


def _headline_rows(h: dict) -> list[list]:
    return [
        ["prefill", f"{_fmt(h['prefill_tok_s'])} tok/s"],
        ["decode", f"{_fmt(h['decode_tok_s'])} tok/s"],
        ["time to first token", f"{_fmt(h['ttft_ms'], 3)} ms"],
        ["forward per decoded token", f"{_fmt(h['forward_ms'], 3)} ms"],
        ["allocated per decoded token", f"{_fmt(h['alloc_bytes_per_token'], 0)} B"],
        ["peak resident memory", f"{_fmt(h['peak_rss_mb'], 1)} MB"],
        ["GC collections per generation", f"{h['gc_collections']}"],
        ["MatMul", f"{_fmt(h['matmul_gflops'])} GFLOPS"],
    ]


def _system_rows(s: dict) -> list[list]:
    return [["CPU", s["cpu"]], ["SIMD", s["simd"]], ["cores / threads used", f"{s['cores']} / {s['threads']}"],
            ["BLAS", s["blas"]], ["kernel path", s["kernel_path"]], ["Python / NumPy", f"{s['python']} / {s['numpy']}"]]


def _scope_table(rows: list[dict]) -> list[str]:
    ops = sorted((r for r in rows if r["kind"] != "container"), key=lambda r: -r["total_ms"])
    return table(["scope", "total ms", "%", "calls", "mean ms", "min ms", "max ms"],
                 [[r["name"], _fmt(r["total_ms"], 3), _fmt(r["pct"], 1), r["calls"], _fmt(r["mean_ms"], 4),
                   _fmt(r["min_ms"], 4), _fmt(r["max_ms"], 4)] for r in ops])


def _hierarchy(rows: list[dict]) -> list[str]:
    lines = ["```"]
    for r in rows:
        label = "  " * r["depth"] + r["op"] + ("/" if r["kind"] == "container" else "")
        lines.append(f"{label:<36} {r['total_ms']:10.3f} ms {r['pct']:6.1f}%  self {r['self_ms']:9.3f} ms"
                     f"  x{r['calls']}")
    lines.append("```")
    return lines


def _roofline_table(rows: list[dict], limit: int | None = None) -> list[str]:
    ranked = furthest_from_roof(rows)[:limit]
    return table(["scope", "FLOPs/call", "bytes/call", "GFLOPS", "GB/s", "of roof", "time %"],
                 [[r["name"], _fmt(r["flops_per_call"], 0), _fmt(r["bytes_per_call"], 0), _fmt(r["gflops"]),
                   _fmt(r["gbps"]), f"{100 * r['roof_fraction']:.1f}%", _fmt(r["pct"], 1)] for r in ranked])


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def _model_rows(m: dict) -> list[list]:
    """The GPT by its config; any other model by its file, architecture and weight types."""
    rows = [["source", m["source"]], ["architecture", m["architecture"]]]
    if m.get("file"):
        rows.append(["file", m["file"]])
    rows.append(["parameters", f"{m['params']:,}"])
    rows += [[f"{t['type']} weights", f"{t['count']} tensors, {t['parameters']:,} values, {_mb(t['bytes'])}"]
             for t in m["weight_types"]]
    if m["architecture"] == "smallmind-gpt":
        rows.append(["config", ", ".join(f"{k}={v}" for k, v in m["config"].items())])
    return rows


def _products_table(products: list[dict]) -> list[str]:
    return table(["product scope", "weights", "weight bytes/forward", "bytes/call", "ms/call", "GB/s",
                  "of DRAM bw", "of cache bw"],
                 [[r["name"], ", ".join(f"{k} x{v}" for k, v in r["weight_types"].items()),
                   _fmt(r["weight_bytes_per_forward"], 0), _fmt(r["bytes_per_call"], 0), _fmt(r["mean_ms"], 4),
                   _fmt(r["gbps"]), f"{100 * r['bw_fraction']:.1f}%", f"{100 * r['cache_bw_fraction']:.1f}%"]
                  for r in products])


def decode_bandwidth_line(d: dict | None) -> str:
    """How far decode is from the bandwidth limit, in one line."""
    if d is None:
        return "decode vs bandwidth: no modelled decode bytes"
    missing = f"; not modelled: {', '.join(d['not_modelled'])}" if d["not_modelled"] else ""
    return (f"decode vs bandwidth: {_mb(d['weight_bytes_per_token'])} of weights ({_mb(d['bytes_per_token'])} "
            f"modelled in all) per token at {_fmt(d['tok_s'])} tok/s = {_fmt(d['gbps'])} GB/s, "
            f"{100 * d['bw_fraction']:.1f}% of the DRAM limit of {_fmt(d['roof_tok_s'])} tok/s "
            f"({100 * d['cache_bw_fraction']:.1f}% of the in-cache copy rate){missing}")


def render_markdown(profile: dict) -> str:
    h, w = profile["headline"], profile["workload"]
    out = ["# SmallMind profile", "",
           f"Model {profile['model']['source']} ({profile['model']['params']:,} parameters); "
           f"{w['prompt_tokens']} prompt tokens, {w['new_tokens']} new tokens (greedy), "
           f"{w['runs']} timed runs (medians), the same number profiled in between.", "",
           "## Model", ""]
    out += table(["", ""], _model_rows(profile["model"]), "ll")
    out += ["", "## System", ""]
    out += table(["", ""], _system_rows(profile["system"]), "ll")
    out += ["", "## Headline", ""]
    out += table(["measure", "value"], _headline_rows(h), "lr")
    c = profile["scope_cost"]
    out += ["", "Speeds are medians of the runs without the recorder. Decode tok/s counts the decoded tokens "
            "(all but the first, which prefill yields) over the decode loop, sampling included; forward per "
            "decoded token is the decode forward alone; time to first token is tokenization, prefill and the "
            "first sampling. MatMul GFLOPS: every matmul scope's modelled FLOPs over its recorded time.", "",
            f"A decode step enters {c['per_decode_step']:.0f} scopes: {c['off_ns']:.0f} ns each with no recorder "
            f"({c['off_pct_of_decode']:.2f}% of the decode forward's time), {c['on_ns']:.0f} ns each while "
            f"recording ({c['on_pct_of_decode']:.1f}%).", ""]
    out += [f"Scopes cover {100 * profile['coverage']:.1f}% of the profiled generation's wall time "
            f"({100 * profile['coverage_raw']:.1f}% before subtracting the recorder's own time); "
            f"recording costs {_fmt(profile['overhead_pct'], 1)}% of wall time "
            f"({profile['scope_cost']['on_ns']:.0f} ns per scope on, {profile['scope_cost']['off_ns']:.0f} ns off).",
            "", "## Hot paths", ""]
    out += _scope_table(profile["scopes"])
    out += ["", "### Call hierarchy", ""]
    out += _hierarchy(profile["scopes"])
    out += ["", "![time by scope](time_by_scope.png)", "", "## Top allocators", "",
            "Bytes per decoded token: per decode step, the peak of traced memory above the step's start, "
            "summed, plus the net growth over the decode, divided by the steps "
            f"({_fmt(profile['allocations']['transient_bytes'], 0)} B transient, "
            f"{_fmt(profile['allocations']['growth_bytes'], 0)} B kept). "
            "By scope: the same measure per call, over one traced generation (leaf scopes; "
            "the recorder itself reads about 16 B per call).", ""]
    out += table(["scope", "bytes", "calls", "bytes/call"],
                 [[a["name"], _fmt(a["bytes"]), _fmt(a["calls"]), _fmt(a["bytes_per_call"], 0)]
                  for a in profile["allocations"]["top_scopes"]])
    out += ["", "By file:line: memory a fresh generation session still holds (made once per session).", ""]
    out += table(["where", "bytes", "blocks"],
                 [[a["where"], _fmt(a["bytes"]), _fmt(a["blocks"])] for a in profile["allocations"]["top_allocators"]])
    p = profile["peaks"]
    out += ["", "## Roofline", "",
            f"Peaks measured now: {_fmt(p['gflops'])} GFLOPS (float32 {p['gemm_n']}x{p['gemm_n']} GEMM, all threads), "
            f"{_fmt(p['gbps'])} GB/s memory roof, the better of a {p['copy_mb']} MB copy ({_fmt(p['copy_gbps'])} GB/s, "
            f"read + write) and a {p['copy_mb']} MB read on {p['read_threads']} threads ({_fmt(p['read_gbps'])} GB/s); "
            f"a {p['cache_copy_mb']} MB copy that stays in cache runs at {_fmt(p['cache_gbps'])} GB/s. FLOPs and bytes per call come from the analytical "
            "cost model (profiler/roofline.py): each product's weights as stored (quantized blocks as they lie "
            "in the file), biases and activations; the other scopes from the config. Scopes furthest from their "
            "roof first. The roof uses memory bandwidth, so a scope whose data stays in cache (a small model's "
            "weights in decode) can pass 100%.", ""]
    out += _roofline_table(profile["scopes"])
    r = profile["roofline"]
    out += ["", "### Products", "",
            "Every product scope per phase: the weights one forward multiplies by there and their bytes as "
            "stored, and the achieved GB/s against the measured DRAM and in-cache copy bandwidths.", ""]
    out += _products_table(r["products"])
    out += ["", "### Decode against the bandwidth limit", "",
            decode_bandwidth_line(r["decode"]) + ". Bytes per token: every modelled decode scope's bytes "
            "(weights, activations, the KV cache read), over the decode step's median time (sampling "
            "included); the limit is the tokens/s at which those bytes move at the measured DRAM bandwidth."]
    if profile.get("train"):
        out += ["", "## Training", ""] + _train_lines(profile["train"])
        out += ["", "![loss curve](loss_curve.png)"]
    return "\n".join(out) + "\n"


def _train_lines(t: dict) -> list[str]:
    lines = [f"{t['steps']} steps of batch {t['batch']} x {t['seq']} tokens: "
             f"{_fmt(t['tok_s'])} tokens/s, {_fmt(t['ms_per_step'])} ms per step.", ""]
    lines += table(["part", "ms per step", "%"],
                   [[k, _fmt(v["ms_per_step"], 3), _fmt(v["pct"], 1)] for k, v in t["split"].items()])
    lines += ["", "Losses: " + ", ".join(f"{x:.4f}" for x in t["losses"]), ""]
    lines += _scope_table(t["scopes"])
    lines += [""] + _roofline_table(t["scopes"])
    return lines


def render_summary(profile: dict, top: int = 10) -> str:
    """The printed summary: system, headline, hottest operations, furthest from roof, training."""
    s, h = profile["system"], profile["headline"]
    out = [f"SmallMind profile: {profile['model']['source']}, {profile['workload']['prompt_tokens']} prompt + "
           f"{profile['workload']['new_tokens']} new tokens",
           f"{s['cpu']} | {s['simd']} | {s['cores']} cores, {s['threads']} threads | {s['blas']} | "
           f"kernels: {s['kernel_path']} | Python {s['python']}, NumPy {s['numpy']}", ""]
    out += table(["headline", "value"], _headline_rows(h), "lr")
    c = profile["scope_cost"]
    out += ["", f"coverage {100 * profile['coverage']:.1f}% (raw {100 * profile['coverage_raw']:.1f}%), "
            f"profiler overhead {profile['overhead_pct']:.1f}% ({c['per_decode_step']:.0f} scopes per decode step at "
            f"{c['on_ns']:.0f} ns, {c['on_pct_of_decode']:.1f}% of the step; with no recorder {c['off_ns']:.0f} ns, "
            f"{c['off_pct_of_decode']:.2f}%)",
            f"peaks measured: {_fmt(profile['peaks']['gflops'])} GFLOPS, {_fmt(profile['peaks']['gbps'])} GB/s "
            f"(in cache {_fmt(profile['peaks']['cache_gbps'])} GB/s)",
            decode_bandwidth_line(profile["roofline"]["decode"]), ""]
    ops = by_operation(profile["scopes"])[:top]
    out += table(["operation", "total ms", "%", "calls"],
                 [[o["op"], _fmt(o["total_ms"], 3), _fmt(o["pct"], 1), o["calls"]] for o in ops])
    allocating = [a for a in profile["allocations"]["top_scopes"] if a["bytes_per_call"] >= 256][:3]
    if allocating:
        out += ["", "allocating most: " + ", ".join(f"{a['name']} {_fmt(a['bytes_per_call'], 0)} B/call"
                                                   for a in allocating)]
    out += ["", "furthest from roof:"]
    out += _roofline_table(profile["scopes"], limit=5)
    out += ["", "products against the measured bandwidths:"]
    out += _products_table(profile["roofline"]["products"])
    if profile.get("train"):
        t = profile["train"]
        split = ", ".join(f"{k} {v['pct']:.0f}%" for k, v in t["split"].items())
        out += ["", f"training: {_fmt(t['tok_s'])} tokens/s (batch {t['batch']} x {t['seq']}), {split}; "
                f"loss {t['losses'][0]:.3f} -> {t['losses'][-1]:.3f}"]
    return "\n".join(out)


# ---- files ------------------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def chart_time_by_scope(rows: list[dict], path: Path, top: int = 20, title: str = "time by scope") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted((r for r in rows if r["kind"] != "container"), key=lambda r: -r["total_ms"])[:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(ops) + 1.5))
    ax.barh([r["name"] for r in ops], [r["total_ms"] for r in ops], color="#4878a8")
    ax.set_xlabel("total ms")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"), dpi=100)
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def chart_loss_curve(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    from matplotlib.ticker import MaxNLocator

    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss over the profiled training steps")
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"), dpi=100)
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def write_profile(profile: dict, out_dir: Path) -> list[Path]:
    """profile.json, profile.md and the charts into out_dir (each file replaced whole)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "profile.json", out_dir / "profile.md", out_dir / "time_by_scope.png"]
    _write_atomic(written[0], (json.dumps(profile, indent=1) + "\n").encode())
    _write_atomic(written[1], render_markdown(profile).encode())
    chart_time_by_scope(profile["scopes"], written[2])
    if profile.get("train"):
        written.append(out_dir / "loss_curve.png")
        chart_loss_curve(profile["train"]["losses"], written[-1])
        written.append(out_dir / "train_time_by_scope.png")
        chart_time_by_scope(profile["train"]["scopes"], written[-1], title="training time by scope")
    return written
