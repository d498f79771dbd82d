"""Tiny random Hugging Face models and their GGUF twins, written the way llama.cpp's converter
(convert_hf_to_gguf.py) writes them, so GGUF model tests can compare against transformers.

    model = make_tiny_model("qwen3")          # transformers, float32, eval mode
    path = write_gguf(model, tmp / "q.gguf", dtype="Q8_0")
    ref = hf_logits(model, ids)               # (T, V) float32

Archs (ARCHS): llama (untied output), llama3 (Llama 3 rope scaling -> a rope_freqs tensor, tied),
qwen2 (q/k/v biases, tied), qwen3 (q/k norms, head_dim != hidden/heads, untied), gpt2 (learned
positions, fused qkv, LayerNorm biases, tied), gemma3 (text-only, 6 layers with a sliding window
of 8, norms stored as 1+w, tied). Every GGUF carries a complete tokenizer section: SentencePiece
style ("llama") for llama/llama3/gemma3, byte-level BPE ("gpt2") for gpt2/qwen2/qwen3.
"""

import math
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

ARCHS = ("llama", "llama3", "qwen2", "qwen3", "gpt2", "gemma3")
DTYPES = ("F32", "F16", "Q8_0")

VOCAB_SIZE = 320
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
CONTEXT = 256  # llama.cpp rounds a context up to 256; a shorter training one makes it warn
GEMMA3_SLIDING_WINDOW = 8  # smaller than the test sequences, so the window really cuts

# Per tokenizer family: the special tokens, where they sit, and the ids the config points at.
# SentencePiece vocabularies put specials first (as Llama and Gemma do), BPE ones last (as GPT-2
# and Qwen do).
_SPM_LLAMA = {"specials": ["<unk>", "<s>", "</s>"], "bos": "<s>", "eos": "</s>", "unk": "<unk>",
              "pad": None, "add_space_prefix": True, "add_bos": True}
_SPM_GEMMA = {"specials": ["<pad>", "<eos>", "<bos>", "<unk>"], "bos": "<bos>", "eos": "<eos>",
              "unk": "<unk>", "pad": "<pad>", "add_space_prefix": False, "add_bos": True}
_BPE_GPT2 = {"specials": ["<|endoftext|>"], "bos": "<|endoftext|>", "eos": "<|endoftext|>",
             "pad": None, "pre": "gpt-2", "add_bos": False}
_BPE_QWEN = {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": "<|endoftext|>",
             "eos": "<|im_end|>", "pad": "<|endoftext|>", "pre": "qwen2", "add_bos": False,
             "chat_template": (
                 "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")}

_TOKENIZERS = {"llama": _SPM_LLAMA, "llama3": _SPM_LLAMA, "gemma3": _SPM_GEMMA,
               "gpt2": _BPE_GPT2, "qwen2": _BPE_QWEN, "qwen3": _BPE_QWEN}

# SentencePiece joins two adjacent pieces only into a piece of the vocabulary, so every longer
# piece is the join of two earlier ones.
_SPM_PIECES = (["\u2581"] + ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"]
               + list("abcdefghijklmnopqrstuvwxyz")
               + ["he", "\u2581th", "\u2581the", "an", "\u2581an", "\u2581and", "in", "er",
                  "on", "re", "at", "en", "is"])

# Each merge joins two tokens that exist by then (a byte or an earlier merge's result).
_BPE_MERGES = (
    "Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "Ġ w", "Ġ o", "e n",
    "Ġ c", "i t", "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p", "o u", "Ġa n",
    "a l", "a r", "Ġt o", "Ġ m", "Ġo f", "Ġ in", "Ġ d", "Ġ h", "Ġan d", "i c", "a s", "l e",
    "Ġt h", "i on", "o m", "l l", "en t", "Ġ n", "Ġ l", "s t", "Ġ re", "v e", "Ġ e", "r o",
    "l y", "Ġb e", "Ġ g", "Ġ T", "c t", "Ġ y", "Ġ ou", "Ġ is", "u t", "Ġ I", "e t", "Ġ 1", "i d",
)


def _token_ids(arch):
    # -> {special token text: id} for the arch's tokenizer at VOCAB_SIZE
    specials = _TOKENIZERS[arch]["specials"]
    if "pre" in _TOKENIZERS[arch]:
        first = VOCAB_SIZE - len(specials)
        return {text: first + i for i, text in enumerate(specials)}
    return {text: i for i, text in enumerate(specials)}


def _config(arch):
    ids = _token_ids(arch)
    tok = _TOKENIZERS[arch]
    special = {"bos_token_id": ids[tok["bos"]], "eos_token_id": ids[tok["eos"]],
               "pad_token_id": ids[tok["pad"]] if tok["pad"] else None}
    common = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT, **special)
    if arch == "llama":
        return transformers.LlamaConfig(
            **common, num_hidden_layers=2, intermediate_size=128, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False)
    if arch == "llama3":
        # A base of 10000 over 16-wide heads spans wavelengths from 6 to 20000 positions, so
        # with the original context at 64 every branch of the Llama 3 rule is taken.
        return transformers.LlamaConfig(
            **common, num_hidden_layers=2, intermediate_size=128, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64},
            tie_word_embeddings=True)
    if arch == "qwen2":
        # 176 is not a multiple of 32: ffn_down falls back to F16 in a Q8_0 file.
        return transformers.Qwen2Config(
            **common, num_hidden_layers=2, intermediate_size=176, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(
            **common, num_hidden_layers=2, intermediate_size=128, head_dim=24, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB_SIZE, n_positions=CONTEXT, n_embd=HIDDEN, n_layer=2, n_head=HEADS,
            layer_norm_epsilon=1e-5, bos_token_id=special["bos_token_id"],
            eos_token_id=special["eos_token_id"])
    if arch == "gemma3":
        # query_pre_attn_scalar = head_dim: llama.cpp scales queries by 1/sqrt(head_dim) for
        # every Gemma 3 size but 27B.
        return transformers.Gemma3TextConfig(
            **common, num_hidden_layers=6, intermediate_size=128, head_dim=16,
            query_pre_attn_scalar=16, rms_norm_eps=1e-6, sliding_window=GEMMA3_SLIDING_WINDOW,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            tie_word_embeddings=True)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def _randomize(model, arch, seed):
    # The transformers init (std 0.02) gives near-uniform logits; these scales keep every
    # activation near unit size so the logits spread over a few units.
    gen = torch.Generator().manual_seed(seed)
    gemma = arch == "gemma3"
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or ".ln_" in name):
                # Gemma's RMSNorm multiplies by (1 + w); the others by w.
                p.copy_(0.1 * noise if gemma else 1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            elif "embed" in name:
                p.copy_(0.25 * noise)
            elif ".wte." in name or ".wpe." in name:
                p.copy_(0.5 * noise)
            elif arch == "gpt2":
                # Conv1D stores (in, out). GELU's nonzero mean writes the same vector at every
                # position; damping the branches that add to the residual keeps the tokens apart.
                damp = 0.3 if name.endswith("c_proj.weight") else 1.0
                p.copy_(damp * noise / math.sqrt(p.shape[0]))
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


def make_tiny_model(arch, seed=0):
    """A tiny random transformers causal LM for `arch` (one of ARCHS), float32, eval mode."""
    config = _config(arch)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32)
    _randomize(model, arch, seed)
    model.eval()
    model.tiny_arch = arch
    return model


def hf_logits(model, ids):
    """(T,) token ids -> (T, V) float32 logits of the transformers model for one sequence."""
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()


def _bytes_to_unicode():
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted
    # past 255, so every byte is one visible character.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def _spm_vocab(arch):
    # -> tokens, scores, types: specials, the 256 byte tokens, then scored pieces
    tok = _TOKENIZERS[arch]
    kinds = gguf.TokenType
    tokens = list(tok["specials"])
    types = [kinds.UNKNOWN if t == tok["unk"] else kinds.CONTROL for t in tokens]
    scores = [0.0] * len(tokens)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [kinds.BYTE] * 256
    scores += [0.0] * 256
    pieces = _SPM_PIECES[:VOCAB_SIZE - len(tokens)]
    tokens += pieces
    types += [kinds.NORMAL] * len(pieces)
    scores += [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _bpe_vocab(arch):
    # -> tokens, merges, types: the 256 byte characters, merge results, then specials
    tok = _TOKENIZERS[arch]
    tokens = _bytes_to_unicode()
    merges = list(_BPE_MERGES[:VOCAB_SIZE - 256 - len(tok["specials"])])
    tokens += [m.replace(" ", "") for m in merges]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += tok["specials"]
    types += [gguf.TokenType.CONTROL] * len(tok["specials"])
    return tokens, merges, types


def _add_tokenizer(writer, arch):
    tok = _TOKENIZERS[arch]
    ids = _token_ids(arch)
    if "pre" in tok:
        tokens, merges, types = _bpe_vocab(arch)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    else:
        tokens, scores, types = _spm_vocab(arch)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(ids[tok["unk"]])
        writer.add_add_space_prefix(tok["add_space_prefix"])
    assert len(tokens) == VOCAB_SIZE and len(set(tokens)) == VOCAB_SIZE
    writer.add_bos_token_id(ids[tok["bos"]])
    writer.add_eos_token_id(ids[tok["eos"]])
    if tok["pad"]:
        writer.add_pad_token_id(ids[tok["pad"]])
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(False)
    if "chat_template" in tok:
        writer.add_chat_template(tok["chat_template"])


_GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "llama3": gguf.MODEL_ARCH.LLAMA,
              "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
              "gpt2": gguf.MODEL_ARCH.GPT2, "gemma3": gguf.MODEL_ARCH.GEMMA3}

_FILE_TYPE = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def _add_hparams(writer, arch, config, dtype):
    # The keys convert_hf_to_gguf.py writes for each family.
    if arch == "gpt2":
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        writer.add_file_type(_FILE_TYPE[dtype])
        return
    rope = config.rope_parameters
    full_rope = rope.get("full_attention", rope)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(full_rope["rope_theta"])
    if "sliding_attention" in rope:
        writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(_FILE_TYPE[dtype])
    if arch in ("llama", "llama3"):
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        writer.add_sliding_window(config.sliding_window)


def _llama3_rope_factors(config):
    # (head_dim // 2,) per-frequency divisors, by the Llama 3 rule as the converter applies it
    rope = config.rope_parameters
    dim = config.head_dim
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _unpermute_rope_rows(w, n_head):
    # (rows, ...) -> same: HF orders each head's rotary pairs as two halves, llama.cpp's
    # "llama" rope wants them interleaved, so each head's rows go (0, h, 1, h+1, ...).
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_tensors(model, arch):
    # -> [(gguf name, float32 array)] in the converter's order and layout
    config = model.config
    n_layer = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(_GGUF_ARCH[arch], n_layer)
    out = []
    if arch == "llama3":
        out.append(("rope_freqs.weight", _llama3_rope_factors(config)))
    # named_parameters drops a tied lm_head, as a safetensors checkpoint does
    for name, p in model.named_parameters():
        data = p.detach().float().numpy().copy()
        if arch in ("llama", "llama3"):
            if name.endswith("q_proj.weight"):
                data = _unpermute_rope_rows(data, config.num_attention_heads)
            elif name.endswith("k_proj.weight"):
                data = _unpermute_rope_rows(data, config.num_key_value_heads)
        if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T.copy()
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {name!r} of {arch}")
        out.append((gguf_name, data.astype(np.float32)))
    return out


def _stored(name, data, dtype):
    # -> (array, ggml type): the converter's rule, 1-D, norms and learned positions stay F32,
    # and a row length Q8_0 cannot block falls back to F16
    f32 = gguf.GGMLQuantizationType.F32
    if (data.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd.")
            or dtype == "F32"):
        return data, f32
    qtype = gguf.GGMLQuantizationType[dtype]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model, path, dtype="F32"):
    """Write a make_tiny_model model as a GGUF file of `dtype` (F32, F16, Q8_0) at path; -> path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    arch = model.tiny_arch
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[_GGUF_ARCH[arch]])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"tiny-random-{arch}")
    _add_hparams(writer, arch, model.config, dtype)
    _add_tokenizer(writer, arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, data in _gguf_tensors(model, arch):
        stored, qtype = _stored(name, data, dtype)
        writer.add_tensor(name, stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
