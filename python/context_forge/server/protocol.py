"""OpenAI-compatible request and response bodies, plus Context Forge's workflow endpoints.

Request models ignore unknown fields (clients such as the `openai` package send fields this server
does not use); fields that would change the output and that the engine cannot honour are rejected
by `server.convert`, not silently ignored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that rejects NaN and infinities (JSON as Python parses it allows `NaN` and `Infinity`)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class WorkflowMeta(BaseModel):
    """Which workflow instance and agent a request belongs to (`workflow` or `custom_params` key)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: StrictStr = Field(min_length=1, max_length=256)
    agent_id: StrictStr | None = Field(default=None, min_length=1, max_length=256)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class SamplingFields(_Request):
    """Fields shared by chat and text completions."""

    model: StrictStr
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = -1
    n: int = 1
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, allow_inf_nan=False)
    logit_bias: dict[str, FiniteFloat] | None = None
    logprobs: Any = None
    user: str | None = None
    workflow: Any = None
    custom_params: Any = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[int] | list[StrictStr] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    """Both the plain response and each streamed chunk (`object` is `text_completion` for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "context-forge"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AgentSpecBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent_id: StrictStr = Field(min_length=1)
    depends_on: list[StrictStr] = Field(default_factory=list)
    optional: bool = False


class WorkflowRegisterRequest(BaseModel):
    """`POST /v1/workflows`: declares a live workflow instance and its agent DAG."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: StrictStr = Field(min_length=1, max_length=256)
    agents: list[AgentSpecBody] = Field(min_length=1)
    repeat: bool = False


class WorkflowEventRequest(BaseModel):
    """`POST /v1/workflows/{id}/events`: an agent of the instance finished, or the instance did."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event: Literal["agent_finished", "workflow_finished"]
    agent_id: StrictStr | None = Field(default=None, min_length=1)


class WorkflowInfo(BaseModel):
    object: Literal["workflow"] = "workflow"
    workflow_id: str
    agents: list[AgentSpecBody]
    repeat: bool


class WorkflowList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
