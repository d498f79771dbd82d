import pytest

import smallmind


def test_public_api_trains_saves_loads_and_generates(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 400
    data = tmp_path / "fox.txt"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = smallmind.train(
        smallmind.TrainConfig(data=str(data), preset="tiny", tokenizer="char", steps=40,
                              batch_size=8, seq=32, eval_every=20, eval_batches=2, out=str(out)),
        progress=False)
    assert result["val_loss"] < result["train_loss"] + 1.0 and result["val_loss"] < 2.0
    ckpt = smallmind.load_checkpoint(out)
    assert ckpt.config.vocab_size == ckpt.tokenizer.vocab_size == len(set(text))
    pieces = list(smallmind.generate(ckpt, "the quick", max_new_tokens=20, temperature=0.0))
    generated = "".join(pieces)
    assert len(pieces) >= 1 and 0 < len(generated) <= 20 and set(generated) <= set(text)


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        smallmind.nope
