"""One profile, end to end: run the engine, measure the machine, assemble the profile dict."""

from collections import Counter
from dataclasses import asdict, is_dataclass

import numpy as np

from ..errors import SmallMindError
from . import engine, machine, report, roofline
from .recorder import scope_cost_ns


def run_profile(net, *, source: str, prompt_ids: np.ndarray, new_tokens: int, repeats: int = 9,
                tokenizer=None, prompt_text: str | None = None, architecture: str | None = None,
                path: str | None = None, train: bool = False, train_batch: int = 4, train_steps: int = 5,
                peak_kwargs: dict | None = None) -> dict:
    """Profile a greedy generation of network `net` (models/__init__.py has the contract) and,
    with train, some training steps (the trainable GPT only). With a tokenizer, the prompt text
    is tokenized (BOS added where the tokenizer wants one) and each new token turned back into
    text, timed like the rest. architecture and path name the model in the report.

    Order matters: the generation runs first so that the peak resident memory is the engine's,
    not the peak measurement's large buffers.
    """
    from ..models.gpt import GPT

    is_gpt = isinstance(net, GPT)
    if train and not is_gpt:
        raise SmallMindError(f"a training profile needs the trainable GPT (a checkpoint or a preset); "
                             f"{architecture or type(net).__name__} is inference-only here")
    gen = engine.Generation(net, prompt_ids, new_tokens, tokenizer=tokenizer, prompt_text=prompt_text)
    timing = engine.time_generation(gen, repeats)
    allocations = engine.trace_allocations(gen)
    trained = None
    if train:
        cfg = net.config
        trained = engine.profile_training(cfg, net.params, batch=train_batch, seq=cfg.context_length,
                                          steps=train_steps)
    rss = engine.peak_rss_mb()
    costs = scope_cost_ns()
    peaks = machine.measure_peaks(**(peak_kwargs or {}))

    recorder = timing["recorder"]
    # time the recorder spends outside every measured interval exists only because we measure
    added_ns = recorder.total_calls() * max(costs["on_ns"] - costs["inside_ns"] - costs["off_ns"], 0.0)
    raw_wall = timing["profiled_wall_ns"]
    wall = max(raw_wall - added_ns, recorder.operation_ns())
    decode = recorder.root.children.get("decode")
    # scopes a decode step enters: its own, every one below it, and the sampling that follows
    per_step = 2 + sum(n.calls for n in _descendants(decode)) / decode.calls if decode else 0.0
    workloads = {"prefill": roofline.prefill_workload(gen.prompt_tokens),
                 "decode": roofline.decode_workload(gen.prompt_tokens, new_tokens - 1)}
    model_cost = roofline.NetworkCost(net)
    rows = report.scope_rows(
        recorder, wall, lambda p, calls, forwards: model_cost.scope_cost(p, calls, forwards, workloads), peaks)
    headline = {
        "prefill_tok_s": timing["prefill_tok_s"],
        "decode_tok_s": timing["decode_tok_s"],
        "ttft_ms": timing["ttft_ms"],
        "forward_ms": timing["forward_ms"],
        "alloc_bytes_per_token": allocations["alloc_bytes_per_token"],
        "peak_rss_mb": rss,
        "gc_collections": timing["gc_collections"],
        "matmul_gflops": report.matmul_gflops(rows),
    }
    profile = {
        "kind": "smallmind-profile",
        "version": 1,
        "model": _model_section(net, source, architecture or ("smallmind-gpt" if is_gpt else type(net).__name__),
                                path),
        "workload": {"prompt_tokens": gen.prompt_tokens, "new_tokens": new_tokens,
                     "decode_steps": new_tokens - 1, "runs": timing["runs"],
                     "tokenized": tokenizer is not None},
        "system": machine.system_info(),
        "headline": headline,
        "overhead_pct": timing["overhead_pct"],
        "scope_cost": dict(costs, per_decode_step=per_step,
                           off_pct_of_decode=100.0 * per_step * costs["off_ns"] / (1e6 * timing["forward_ms"]),
                           on_pct_of_decode=100.0 * per_step * costs["on_ns"] / (1e6 * timing["forward_ms"])),
        "coverage": recorder.operation_ns() / wall,
        "coverage_raw": recorder.operation_ns() / raw_wall,
        # a plain generation (median); all profiled generations, and those less the recorder's time
        "wall_ms": {"plain_median": timing["wall_ms"], "profiled_total": raw_wall / 1e6, "profiled_net": wall / 1e6},
        "phases_ms": timing["phases_ms"],  # medians of the plain generations
        "peaks": peaks,
        "scopes": rows,
        "roofline": _roofline_section(rows, model_cost, headline["decode_tok_s"], peaks),
        "allocations": allocations,
        "tokens": timing["tokens"],
        "train": None,
    }
    if trained is not None:
        profile["train"] = _train_section(net.config, trained, peaks)
    return profile


def _model_section(net, source: str, architecture: str, path: str | None) -> dict:
    """What was profiled: source, architecture, file, parameters, weight types and the config."""
    types, seen = {}, set()
    for _, t in net.weights():
        if id(t) in seen:  # a tied head names the embedding twice
            continue
        seen.add(id(t))
        entry = types.setdefault(roofline.weight_type(t), {"count": 0, "parameters": 0, "bytes": 0})
        entry["count"] += 1
        entry["parameters"] += int(np.prod(t.shape))
        entry["bytes"] += int(t.nbytes)
    weight_types = [dict(type=k, **v) for k, v in sorted(types.items(), key=lambda kv: -kv[1]["bytes"])]
    cfg = net.config
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg) if is_dataclass(cfg) else {}
    return {"source": source, "architecture": architecture, "file": path,
            "params": sum(t["parameters"] for t in weight_types), "weight_types": weight_types,
            "config": {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}}


def _roofline_section(rows: list[dict], model_cost: roofline.NetworkCost, decode_tok_s: float, peaks: dict) -> dict:
    """Per product scope and phase: the weights it reads (types, bytes as stored) and its
    achieved GB/s against the measured bandwidths; and decode as a whole against the DRAM
    bandwidth limit: modelled bytes per decoded token over the decode step's time (sampling
    included), and the tokens/s that moving those bytes at the measured DRAM bandwidth allows."""
    products = []
    for r in rows:
        if r["op"] in model_cost.scopes and r["gbps"] is not None:
            types = Counter(p.weight_type for p in model_cost.products if p.scope == r["op"])
            products.append({
                "name": r["name"], "op": r["op"], "weights": sum(types.values()),
                "weight_types": dict(sorted(types.items())),
                "weight_bytes_per_forward": model_cost.weight_bytes(r["op"]),
                "bytes_per_call": r["bytes_per_call"], "calls": r["calls"], "mean_ms": r["mean_ms"],
                "gbps": r["gbps"], "bw_fraction": r["bw_fraction"], "cache_bw_fraction": r["cache_bw_fraction"]})
    ops = [r for r in rows if r["kind"] == "operation" and r["name"].startswith("decode/")]
    steps = next((r["calls"] for r in rows if r["name"] == "decode"), 0)
    moved = sum(r["bytes_per_call"] * r["calls"] for r in ops if r["bytes_per_call"] is not None) / max(steps, 1)
    decode = None
    if moved > 0 and decode_tok_s > 0:
        gbps = moved * decode_tok_s / 1e9
        roof_tok_s = peaks["gbps"] * 1e9 / moved
        decode = {"weight_bytes_per_token": model_cost.weight_bytes(), "bytes_per_token": moved,
                  "tok_s": decode_tok_s, "gbps": gbps, "roof_tok_s": roof_tok_s,
                  "bw_fraction": decode_tok_s / roof_tok_s, "cache_bw_fraction": gbps / peaks["cache_gbps"],
                  "not_modelled": sorted({r["op"] for r in ops if r["bytes_per_call"] is None})}
    return {"products": products, "decode": decode}


def _train_section(cfg, trained: dict, peaks: dict) -> dict:
    recorder, wall, steps = trained["recorder"], trained["wall_ns"], trained["steps"]
    workloads = {"train": roofline.train_workload(trained["batch"], trained["seq"])}
    rows = report.scope_rows(
        recorder, wall, lambda p, calls, forwards: roofline.scope_cost(p, calls, cfg, workloads, steps), peaks)
    split = {}
    for part in ("forward", "backward", "optimizer"):
        ns = sum(n.total_ns for n in recorder.nodes() if n.name == part
                 and not any(a.name == part for a in _ancestors(n)))
        split[part] = {"ms_per_step": ns / steps / 1e6, "pct": 100.0 * ns / wall}
    return {"batch": trained["batch"], "seq": trained["seq"], "steps": steps, "tok_s": trained["tok_s"],
            "ms_per_step": wall / steps / 1e6, "losses": trained["losses"], "split": split,
            "coverage": recorder.operation_ns() / wall, "scopes": rows}


def _descendants(node):
    stack = list(node.children.values())
    while stack:
        child = stack.pop()
        yield child
        stack.extend(child.children.values())


def _ancestors(node):
    node = node.parent
    while node is not None and node.parent is not None:
        yield node
        node = node.parent
