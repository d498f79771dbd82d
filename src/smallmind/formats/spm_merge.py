"""llama.cpp's SentencePiece-style tokenizer: greedy bigram merging by vocabulary score.

Start from one symbol per character; repeatedly merge the adjacent pair whose concatenation is a
vocabulary token of the highest score (ties: the leftmost pair), until no pair forms a token. Each
final symbol is its token, or, if it is not one, its UTF-8 bytes as <0xXX> byte tokens. This is
llama.cpp's llm_tokenizer_spm_session, not SentencePiece's own algorithm: it may form any token of
the vocabulary (CONTROL ones included), exactly as llama.cpp does.
"""

from heapq import heapify, heappop, heappush

from ..errors import TokenizerError


class SPMMerger:
    """Encodes text (spaces already replaced by U+2581) to ids with llama.cpp's SPM rule."""

    def __init__(self, token_to_id: dict, scores: list, byte_ids: list):
        self.token_to_id = token_to_id
        self.scores = scores        # id -> float score (a Python list: indexing numpy is slow)
        self.byte_ids = byte_ids    # byte value -> id of its <0xXX> token, or None

    def encode(self, text: str) -> list:
        n = len(text)
        if n == 0:
            return []
        get = self.token_to_id.get
        scores = self.scores
        # symbol i starts at character i; length[i] == 0 once merged into its left neighbour
        length = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # heap entries (-score, left, right, merged length): highest score, then leftmost, first
        heap = []
        for i in range(n - 1):
            token_id = get(text[i:i + 2])
            if token_id is not None:
                heap.append((-scores[token_id], i, i + 1, 2))
        heapify(heap)

        while heap:
            _, left, right, size = heappop(heap)
            # stale: one side was merged away or grew since this pair was queued
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue
            length[left] = size
            length[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                merged = size + length[before]
                token_id = get(text[before:before + merged])
                if token_id is not None:
                    heappush(heap, (-scores[token_id], before, left, merged))
            if after >= 0:
                merged = size + length[after]
                token_id = get(text[left:left + merged])
                if token_id is not None:
                    heappush(heap, (-scores[token_id], left, after, merged))

        ids = []
        i = 0
        while i != -1:
            piece = text[i:i + length[i]]
            token_id = get(piece)
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self.byte_token(b) for b in piece.encode("utf-8"))
            i = nxt[i]
        return ids

    def byte_token(self, byte: int) -> int:
        token_id = self.byte_ids[byte]
        if token_id is None:
            raise TokenizerError(f"the vocabulary has no byte token <0x{byte:02X}> for a character "
                                 "it cannot spell otherwise")
        return token_id
