"""Small BPE checkpoints for the export, quantize and perplexity tests, and llama.cpp driven
through llama-cpp-python as the reference (greedy continuation, logits)."""

import numpy as np

from smallmind.formats.checkpoint import save_checkpoint
from smallmind.formats.text_data import split_documents, stdlib_corpus
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import init_params, preset


def corpus_text(chars=120_000) -> str:
    return split_documents(stdlib_corpus(chars))[0]


def random_bpe_checkpoint(path, *, preset_name="tiny", tokenizer_kind="bpe", tied=True, seed=0, **overrides):
    # random weights (larger than the init's, so that logits differ visibly) and a tokenizer of the stdlib text
    text = corpus_text()
    tok = train_tokenizer(tokenizer_kind, text, 384)
    cfg = preset(preset_name, vocab_size=tok.vocab_size, tied_head=tied, **overrides)
    params = init_params(cfg, seed)
    rng = np.random.default_rng(seed)
    params.flat[:] += rng.normal(0.0, 0.05, params.flat.shape).astype(np.float32)
    save_checkpoint(path, config=cfg, params=params, tokenizer=tok)
    return path


def greedy_ids(model, prompt_ids, n) -> list:
    # SmallMind's greedy continuation: the argmax after each step
    session = model.session(len(prompt_ids) + n)
    logits = session.prefill(np.asarray(prompt_ids, np.int32))
    out = []
    for _ in range(n):
        token = int(np.argmax(logits))
        out.append(token)
        logits = session.step(token)
    return out


class LlamaModel:
    """A GGUF file in llama.cpp: tokenize, greedy continuation, logits of a sequence."""

    def __init__(self, path, n_ctx, kv_dtype=np.float16):
        import llama_cpp

        # the KV cache in SmallMind's dtype for the file (ggml type 0: F32, 1: F16)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   logits_all=True, verbose=False, n_threads=2,
                                   type_k=0 if kv_dtype == np.float32 else 1,
                                   type_v=0 if kv_dtype == np.float32 else 1)

    def tokenize(self, text: str, add_bos: bool) -> list:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))

    def logits(self, ids) -> np.ndarray:
        # ids (T,) -> (T,V) float32, from an empty cache
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))
        return np.array(self.llm.scores[:len(ids)], np.float32)

    def greedy_ids(self, prompt_ids, n) -> list:
        self.llm.reset()
        self.llm.eval(list(map(int, prompt_ids)))
        out = []
        for _ in range(n):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return out


def trained_run():
    """A seed GPT trained briefly on the stdlib source with a BPE tokenizer (the slow tests'
    model): $SMALLMIND_TEST_TRAINED_RUN if set, else trained once into the temp directory."""
    import os
    import tempfile
    from pathlib import Path

    from smallmind.formats.checkpoint import has_checkpoint
    from smallmind.runtime.trainer import TrainConfig, train

    given = os.environ.get("SMALLMIND_TEST_TRAINED_RUN")
    if given:
        return Path(given)
    out = Path(tempfile.gettempdir()) / "smallmind-test-trained-seed-200"
    if not has_checkpoint(out):
        train(TrainConfig(preset="seed", tokenizer="bpe", steps=200, batch_size=8, eval_every=200, eval_batches=2,
                          max_corpus_chars=1_000_000, out=str(out), overwrite=True), progress=False)
    return out
