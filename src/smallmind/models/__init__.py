"""Model families: one file each (config from metadata, weights, forward), and their registry.

Every family's network keeps one contract, which the runtime drives (runtime/session.py) and
nothing else assumes more of:

    net.config        frozen dataclass: at least vocab_size, context_length (as trained),
                      n_layers, d_model, and whatever else the family needs
    net.kv_spec       (n_layers, n_kv_heads, head_dim): what runtime.kv_cache.KVCache allocates
                      (the runtime owns the cache and hands it to every forward)
    net.kv_dtype      np.float16 or np.float32 (optional, default float32): the dtype the runtime
                      allocates the KV cache in. The GGUF families take float16, llama.cpp's
                      default: K/V rounded to IEEE half, and attention over a half cache computed
                      as ggml does (kernels.attention), unless every matrix of the file is
                      float32 (then float32); the trainable GPT keeps float32. A forward accepts
                      a cache of either dtype
    net.workspace(max_tokens) -> ws
                      every activation buffer of a forward of up to max_tokens tokens, made once
                      per session, so that a decode step allocates nothing
    net.forward(ws, kv, tokens, pos0, all_logits=False, logits=True) -> logits
                      tokens (T,) int32 at positions pos0..pos0+T-1; kv holds this sequence's
                      first pos0 positions; the forward writes the T new positions and sets
                      kv.length = pos0 + T. Returns the last position's (V,) logits, or (T,V)
                      with all_logits: views into ws, overwritten by the next forward; with
                      logits=False, None, and neither the final norm nor the LM head runs (a
                      prompt chunk whose logits nobody reads: the 262k-row head of Gemma 3 is
                      more than half of its one-token forward)
    net.forward_batch(ws, kvs, tokens, positions) -> logits          (optional)
                      one decode step of B sequences: tokens (B,) int, token b at positions[b]
                      of the sequence whose KVCache is kvs[b] (which holds its first positions[b]
                      positions and gets length positions[b] + 1). The linear layers run once
                      over the B rows; embedding, KV store and attention per row over its own
                      cache. ws is a workspace(max_tokens >= B); returns (B,V) logits, a view
                      into ws; row b equals forward(ws, kvs[b], tokens[b:b+1], positions[b]).
                      A network without it is decoded one forward per sequence (runtime/engine.py)
    net.weights()     (name, tensor) for every weight, a float32 array or a kernels.QTensor:
                      what `inspect` and memory estimates read
    net.products()    (scope, tensor) for every weight matrix a forward multiplies by, under the
                      profiler scope the product runs in ("matmul.qkv", "matmul.attn_out",
                      "matmul.mlp_up", "matmul.mlp_down", "matmul.lm_head"): the profiler's
                      roofline counts the bytes (quantized as stored) and FLOPs each product reads

The registry maps a GGUF file's general.architecture to the module that builds its network:
family(arch).from_gguf(gguf_file) -> net.
"""

import importlib

from ..errors import GGUFError

# general.architecture -> module (in this package) whose from_gguf builds the network
FAMILIES = {
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma3": "gemma3",
    "gpt2": "gpt2",
}


def family(arch: str):
    """The module whose `from_gguf(gguf_file)` builds a network of architecture `arch`."""
    if arch not in FAMILIES:
        raise GGUFError(f"model architecture {arch!r} is not supported; supported: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{FAMILIES[arch]}")
