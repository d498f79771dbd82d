"""A trained GPT checkpoint as a GGUF file of architecture `gpt2`, as llama.cpp reads it.

    plans, metadata, fallbacks = gpt2_gguf_plan(checkpoint, "Q8_0", name="run1")

SmallMind's GPT is GPT-2's architecture (learned positions, pre-LayerNorm blocks with biases,
a fused [q; k; v] projection, a GELU (tanh) MLP of 4x the width, a final LayerNorm, a head tied
to the token embedding unless the checkpoint has its own), so the weights map one to one onto
llama.cpp's gpt2 tensors, in the same (out, in) layout.

The byte-level BPE tokenizer becomes GGUF's `gpt2` tokenizer model: the tokens in id order (in
GPT-2's byte alphabet, as HF writes them), every token NORMAL, the merges in rank order and the
`gpt-2` pre-tokenizer (the same regex as SmallMind's). SmallMind's tokenizers have no BOS or
EOS token, and llama.cpp would take id 11 for both when none is named; the file names the
token of byte 0x00 for both instead (training text never contains NUL, so the model does not
emit it and generation is not cut short), with add_bos_token false so that nothing is
prepended. A character-level tokenizer is refused: no GGUF tokenizer model splits text into
those characters as SmallMind does (an unknown character is an error here, a byte there).
"""

import numpy as np

from ..errors import SmallMindError
from ..kernels.quantize import quantize
from .checkpoint import load_checkpoint, resolve_checkpoint_dir
from .gguf_write import TensorPlan, check_output_path, write_gguf
from .quant_recipe import FILE_TYPES, TensorChoice, check_file_type, tensor_types

GGUF_TOKEN_NORMAL = 1
NUL_TOKEN = "\u0100"  # byte 0x00 in GPT-2's byte alphabet


def gguf_name(param: str) -> str:
    """llama.cpp's gpt2 tensor name for a SmallMind GPT parameter name."""
    top = {"wte": "token_embd.weight", "wpe": "position_embd.weight", "ln_f.weight": "output_norm.weight",
           "ln_f.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
    if param in top:
        return top[param]
    _, layer, rest = param.split(".", 2)
    parts = {"ln_1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.up": "ffn_up", "mlp.down": "ffn_down"}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{parts[module]}.{kind}"


def tokenizer_metadata(tokenizer, vocab_size: int) -> list:
    """The tokenizer.ggml.* entries for a SmallMind BPE tokenizer (refusing what GGUF cannot hold)."""
    if tokenizer.kind != "bpe":
        raise SmallMindError(
            f"this checkpoint uses a {tokenizer.kind}-level tokenizer, which a GGUF file cannot carry so that "
            "llama.cpp tokenizes text the same way; train the model with --tokenizer bpe to export it")
    d = tokenizer.to_dict()["tokenizer"]
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    expressible = (
        model.get("type") == "BPE" and not d.get("added_tokens") and d.get("normalizer") is None
        and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True)
        and not model.get("byte_fallback") and not model.get("ignore_merges")
        and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"))
    if not expressible:
        raise SmallMindError("this checkpoint's BPE tokenizer is not plain GPT-2 byte-level BPE (it has special "
                             "tokens, a normalizer or another pre-tokenizer), which GGUF's gpt2 tokenizer cannot express")
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        if not 0 <= i < len(vocab) or tokens[i] is not None:
            raise SmallMindError("this checkpoint's BPE vocabulary does not number its tokens 0..n-1")
        tokens[i] = text
    if len(tokens) != vocab_size:
        raise SmallMindError(f"the tokenizer has {len(tokens)} tokens but the model {vocab_size}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if NUL_TOKEN not in vocab:
        raise SmallMindError("this checkpoint's BPE vocabulary lacks the byte 0x00 token")
    nul = vocab[NUL_TOKEN]
    return [
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "gpt-2"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", np.full(len(tokens), GGUF_TOKEN_NORMAL, np.int32)),
        # BPE ranks by merges, not scores; zeros are written because some readers require the key
        ("tokenizer.ggml.scores", np.zeros(len(tokens), np.float32)),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.bos_token_id", nul),
        ("tokenizer.ggml.eos_token_id", nul),
        ("tokenizer.ggml.add_bos_token", False),
        ("tokenizer.ggml.add_eos_token", False),
    ]


def gpt2_gguf_plan(checkpoint, file_type: str, name: str):
    """(tensor plans, metadata, fallbacks) of `checkpoint` as a gpt2 GGUF file of `file_type`;
    fallbacks lists (tensor, wanted format, stored format) where a width did not fit a block."""
    cfg = checkpoint.config
    metadata = [
        ("general.type", "model"),
        ("general.name", name),
        ("general.file_type", FILE_TYPES[file_type][0]),
        ("general.quantization_version", 2),
        ("gpt2.context_length", cfg.context_length),
        ("gpt2.embedding_length", cfg.d_model),
        ("gpt2.feed_forward_length", 4 * cfg.d_model),
        ("gpt2.block_count", cfg.n_layers),
        ("gpt2.attention.head_count", cfg.n_heads),
        ("gpt2.attention.layer_norm_epsilon", float(cfg.layer_norm_eps)),
        *tokenizer_metadata(checkpoint.tokenizer, cfg.vocab_size),
    ]
    params = [(gguf_name(p), arr) for p, arr in checkpoint.params.items()]
    choices = tensor_types([(n, a.shape) for n, a in params], file_type, cfg.n_layers)
    plans, fallbacks = [], []
    for gname, arr in _llama_order(params):
        choice = choices.get(gname, TensorChoice("F32"))
        if choice.wanted:
            fallbacks.append((gname, choice.wanted, choice.qtype))
        plans.append(TensorPlan(gname, choice.qtype, arr.shape, _producer(gname, arr, choice.qtype)))
    return plans, metadata, fallbacks


def _producer(name, arr, qtype):
    if qtype == "F32":
        return lambda: arr
    return lambda: quantize(arr, qtype, name)


def _llama_order(params):
    # the order convert_hf_to_gguf writes: embeddings, output, then block by block
    def key(item):
        n = item[0]
        return (1, int(n.split(".")[1]), n) if n.startswith("blk.") else (0, 0, n)
    return sorted(params, key=key)


def export_checkpoint(path, out, file_type: str, *, force: bool = False, progress=None):
    """Write the checkpoint at `path` (a run's out directory or a checkpoint) to `out` as a gpt2
    GGUF file of `file_type`; returns (file size, tensor plans, fallbacks)."""
    check_file_type(file_type)
    check_output_path(out, force)
    checkpoint = load_checkpoint(path)
    where = resolve_checkpoint_dir(path).resolve()
    # a run's best/ or last/ checkpoint is named after the run
    label = where.parent.name if where.name in ("best", "last") else where.name
    plans, metadata, fallbacks = gpt2_gguf_plan(checkpoint, file_type, name=label)
    size = write_gguf(out, "gpt2", metadata, plans, force=force, progress=progress)
    return size, plans, fallbacks
