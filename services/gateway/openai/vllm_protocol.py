"""Request and response types of the endpoints `vllm serve` offers beside OpenAI's:
`/tokenize`, `/detokenize`, `/score` (`/v1/score`) and `/classify`.

Field names, defaults and answer shapes are vLLM's (checked field by field against vLLM's own
server in tests/integration/test_vllm_endpoints.py), so clients written for `vllm serve` work
unchanged. As there, `model` may be left out when the gateway serves one model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from services.common.errors import InvalidArgument
from services.gateway.openai.protocol import ChatMessage, OpenAIRequest, new_id, now


class TokenizeRequest(OpenAIRequest):
    """A prompt (`prompt`) or a chat (`messages`), exactly one."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # vLLM's defaults: true for a prompt, false for a chat (the template adds them).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.continue_final_message and self.add_generation_prompt and self.messages:
            raise ValueError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


class DetokenizeResponse(BaseModel):
    prompt: str


ScoreInput = str | list[str]


class ScoreRequest(OpenAIRequest):
    """vLLM's spellings of the two sides: `text_1`/`text_2`, `data_1`/`data_2`,
    `queries`/`documents` or `queries`/`items`. Side 1 holds one text (scored against every
    text of side 2) or as many as side 2 (scored pairwise)."""

    model: str | None = None
    text_1: ScoreInput | None = None
    text_2: ScoreInput | None = None
    data_1: ScoreInput | None = None
    data_2: ScoreInput | None = None
    queries: ScoreInput | None = None
    documents: ScoreInput | None = None
    items: ScoreInput | None = None

    def sides(self) -> tuple[list[str], list[str]]:
        for first, second in (
            (self.text_1, self.text_2),
            (self.data_1, self.data_2),
            (self.queries, self.documents),
            (self.queries, self.items),
        ):
            if first is not None and second is not None:
                return _texts(first), _texts(second)
        raise InvalidArgument(
            "give the texts to score as 'text_1' and 'text_2' (or 'data_1'/'data_2', "
            "'queries'/'documents', 'queries'/'items')"
        )


def _texts(value: ScoreInput) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("score"))
    object: str = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class ClassificationRequest(OpenAIRequest):
    model: str | None = None
    input: str | list[str]


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("classify"))
    object: str = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ClassificationData]
    usage: UsageInfo
