"""The seed GPT in F32, Q8_0 and Q4_0: decode speed, weight bytes and perplexity.

    .venv/bin/python benchmarks/quantized_gpt.py [--checkpoint DIR] [--steps 300] [--threads 2]

Without --checkpoint, the seed preset is first trained for --steps steps on the stdlib source
with a BPE tokenizer (a trained model: random weights would make perplexity meaningless). The
checkpoint is exported in each type through `export_checkpoint`, loaded back with
smallmind.load (the gpt2 family on the native kernels, QTensor weights for the quantized
types) and measured:
  - decode: a 16-token prompt prefilled, then --tokens greedy steps through a runtime Session;
    the median of --repeats runs, types alternating, after a short idle pause
  - weight bytes: every weight tensor as the model holds it
  - perplexity: llama.cpp's windows (ctx 128, the second half scored) on the held-out part of
    the stdlib source, --chunks windows
Targets (issue 9): Q8_0 decodes at least as fast as F32 with under a third of the weight
bytes; perplexity within 1% of F32 for Q8_0 and within 5% for Q4_0.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import smallmind
from smallmind import kernels
from smallmind.formats.gguf_export import export_checkpoint
from smallmind.cli.perplexity import held_out_text
from smallmind.runtime.perplexity import perplexity

TYPES = ("F32", "Q8_0", "Q4_0")


def weight_bytes(model) -> int:
    return sum(w.nbytes for _, w in model.net.weights())


def decode_seconds(model, prompt, tokens) -> float:
    # prompt (P,) int32 -> seconds of `tokens` greedy decode steps (argmax included)
    session = model.session(prompt.shape[0] + tokens)
    logits = session.prefill(prompt)
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = session.step(int(np.argmax(logits)))
    return time.perf_counter() - t0


def train_seed(out: Path, steps: int) -> Path:
    from smallmind.runtime.trainer import TrainConfig, train

    print(f"training the seed preset for {steps} steps ...", file=sys.stderr)
    train(TrainConfig(preset="seed", tokenizer="bpe", steps=steps, eval_every=steps, eval_batches=4,
                      out=str(out)), progress=sys.stderr.isatty())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a trained seed checkpoint (a run's --out directory)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no checkpoint is given")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=100, help="decode steps per timed run")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pause", type=float, default=0.2, help="idle seconds before each timed run")
    ap.add_argument("--chunks", type=int, default=32, help="perplexity windows")
    args = ap.parse_args()
    if args.threads:
        kernels.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="smallmind-quant-bench-") as tmp:
        run(args, Path(tmp))


def run(args, tmp: Path):
    ckpt = Path(args.checkpoint) if args.checkpoint else train_seed(tmp / "run", args.steps)
    models = {}
    for t in TYPES:
        export_checkpoint(ckpt, tmp / f"seed-{t}.gguf", t)
        models[t] = smallmind.load(tmp / f"seed-{t}.gguf")
    text = held_out_text()
    prompt = np.asarray(models["F32"].tokenize(text[:2000])[:16], np.int32)
    times = {t: [] for t in TYPES}
    for t in TYPES:
        decode_seconds(models[t], prompt, 8)  # warm up: first-touch of the mapped weights
    for _ in range(args.repeats):
        for t in TYPES:
            time.sleep(args.pause)
            times[t].append(decode_seconds(models[t], prompt, args.tokens))
    rows = {}
    for t in TYPES:
        ppl = perplexity(models[t], text, 128, chunks=args.chunks)
        seconds = statistics.median(times[t])
        rows[t] = {"decode_tok_s": args.tokens / seconds, "decode_tok_s_range": [args.tokens / max(times[t]),
                   args.tokens / min(times[t])], "weight_bytes": weight_bytes(models[t]),
                   "perplexity": ppl.perplexity, "ppl_tokens": ppl.tokens}
    base = rows["F32"]
    print(f"{'type':6} {'decode tok/s':>14} {'weight bytes':>14} {'vs F32':>8} {'perplexity':>11} {'vs F32':>8}")
    for t, r in rows.items():
        print(f"{t:6} {r['decode_tok_s']:14.0f} {r['weight_bytes']:14,} {r['weight_bytes'] / base['weight_bytes']:8.1%} "
              f"{r['perplexity']:11.4f} {r['perplexity'] / base['perplexity'] - 1:+8.2%}")
    q8, q4 = rows["Q8_0"], rows["Q4_0"]
    targets = {
        "Q8_0 decode >= F32": q8["decode_tok_s"] >= base["decode_tok_s"],
        "Q8_0 bytes < F32 / 3": q8["weight_bytes"] < base["weight_bytes"] / 3,
        "Q8_0 perplexity within 1%": abs(q8["perplexity"] / base["perplexity"] - 1) <= 0.01,
        "Q4_0 perplexity within 5%": abs(q4["perplexity"] / base["perplexity"] - 1) <= 0.05,
    }
    for name, ok in targets.items():
        print(f"  {'met' if ok else 'MISSED'}: {name}")
    print(json.dumps({"checkpoint": str(ckpt) if args.checkpoint else None, "kernels": kernels.path,
                      "rows": rows, "targets": targets}))


if __name__ == "__main__":
    main()
