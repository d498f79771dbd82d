"""The OpenAI API's request and response bodies, as pydantic models: FastAPI validates requests
against them and documents them in /openapi.json.

Only what the server honours is declared; other fields clients commonly send (user,
frequency_penalty, ...) are ignored, as the OpenAI API's many compatible servers do. Limits
follow OpenAI's: temperature 0..2, top_p in (0, 1], at most 4 stop strings, completions
logprobs 0..5, chat top_logprobs 0..20, n only 1.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4

Stop = str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)] | None


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What completions and chat completions share. A null is the default, as OpenAI takes it
    (clients built on other SDKs send explicit nulls)."""
    model: str = Field(description="the id /v1/models lists")
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = Field(1.0, description="0 is greedy")
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = 1.0
    n: Annotated[int, Field(ge=1, le=1, description="only 1 is supported")] | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed = None


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] \
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
            description="text, a list of one text, or token ids")
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(16, description="default 16, as OpenAI's")
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="takes precedence over max_tokens; default: what fits the context")
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


# -- responses ----------------------------------------------------------------------------------

class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens whose KV cache came from an earlier request")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "smallmind"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "an OpenAI-style error object"})
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    active_sequences: int
    queue_depth: int
