"""One profile, end to end: run the engine, measure the machine, assemble the profile dict."""

import numpy as np

from ..models.gpt import GPTConfig, Params
from . import engine, machine, report, roofline
from .recorder import scope_cost_ns


def run_profile(cfg: GPTConfig, params: Params, *, source: str, prompt_ids: np.ndarray, new_tokens: int,
                repeats: int = 9, tokenizer=None, prompt_text: str | None = None, train: bool = False,
                train_batch: int = 4, train_steps: int = 5, peak_kwargs: dict | None = None) -> dict:
    """Profile a greedy generation (and, with train, some training steps) of the model.

    Order matters: the generation runs first so that the peak resident memory is the engine's,
    not the peak measurement's large buffers.
    """
    from ..models.gpt import GPT

    gen = engine.Generation(GPT(params), prompt_ids, new_tokens, tokenizer=tokenizer, prompt_text=prompt_text)
    timing = engine.time_generation(gen, repeats)
    allocations = engine.trace_allocations(gen)
    trained = None
    if train:
        trained = engine.profile_training(cfg, params, batch=train_batch, seq=cfg.context_length,
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
    rows = report.scope_rows(recorder, wall, cfg, workloads, peaks)
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
        "model": {"source": source, "config": cfg.to_dict(), "params": int(params.count)},
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
        "allocations": allocations,
        "tokens": timing["tokens"],
        "train": None,
    }
    if trained is not None:
        profile["train"] = _train_section(cfg, trained, peaks)
    return profile


def _train_section(cfg: GPTConfig, trained: dict, peaks: dict) -> dict:
    recorder, wall, steps = trained["recorder"], trained["wall_ns"], trained["steps"]
    workloads = {"train": roofline.train_workload(trained["batch"], trained["seq"])}
    rows = report.scope_rows(recorder, wall, cfg, workloads, peaks, train_steps=steps)
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
