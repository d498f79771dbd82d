"""llama.cpp's tokenizer, through llama-cpp-python, as the reference our tokenizers must equal.

tokenize(text, add_special, special) is llama_tokenize; detokenize(ids, special) is llama_detokenize
with remove_special=False (what llama.cpp's common_detokenize does); piece(id, special) is
llama_token_to_piece with lstrip=0 (what its server streams).
"""

import ctypes

import llama_cpp

PIECE_BUFFER = 256


class LlamaVocabRef:
    def __init__(self, path):
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool, special: bool) -> list:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=special))

    def detokenize_bytes(self, ids: list, special: bool) -> bytes:
        tokens = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
        size = 64 + 64 * len(ids)
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(self.vocab, tokens, len(ids), buf, size, False, special)
        assert 0 <= n <= size, n
        return buf.raw[:n]

    def detokenize(self, ids: list, special: bool) -> str:
        return self.detokenize_bytes(ids, special).decode("utf-8", errors="replace")

    def piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(PIECE_BUFFER)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, PIECE_BUFFER, 0, special)
        assert 0 <= n <= PIECE_BUFFER, n
        return buf.raw[:n]

    def eog_ids(self) -> list:
        return [i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, i)]

    def special_ids(self) -> dict:
        def known(token_id):
            return None if token_id < 0 else int(token_id)

        return {
            "bos_id": known(llama_cpp.llama_vocab_bos(self.vocab)),
            "eos_id": known(llama_cpp.llama_vocab_eos(self.vocab)),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)),
            "vocab_size": int(self.n_vocab),
        }
