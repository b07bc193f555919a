"""Request and response bodies: OpenAI's shapes, plus one field per runtime input of the host.

The generation requests' extra fields (``preference``, ``adapter``, ...) are not written here:
:func:`with_runtime_inputs` adds one per ``RuntimeInput`` the host's adapter types declared at
registration, so a new type is accepted over HTTP without touching this file.

Unknown request fields are refused (400 naming the field) rather than ignored, so a typo such as
``preferences`` never silently serves the wrong trade-off (DESIGN §7). OpenAI fields this server
does not implement are accepted at their neutral values (``presence_penalty: 0``, ``logprobs:
false``, ``tools: []``, ...), so tools built on the OpenAI client work; any other value would change
the output and is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, create_model, field_validator

from parsona.store import RULE_SOURCES

ID = "Opaque id, as returned by this server."


class _Strict(BaseModel):
    # strict: "0.5" is not a number and true is not a weight (an int is still a float, as JSON has it)
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        """JSON may carry lone surrogates ("\\ud800"); tokenizers and SQLite cannot take them."""
        check_text(value)
        return value


def check_text(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone UTF-16 surrogate; send valid Unicode text") from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_text(item)


# -- generation ---------------------------------------------------------------------------------
class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(description="The message text (plain text only).")


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="Send a last chunk with token usage before [DONE].")


class _Sampling(_Strict):
    model: str = Field(description="The served model id (see GET /v1/models).")
    temperature: float = Field(1.0, ge=0, le=2, description="0 decodes greedily; higher samples more freely.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens "
                         "whose probability reaches top_p.")
    n: int = Field(1, ge=1, le=1, description="Number of choices; only 1 is supported.")
    stop: Optional[Union[str, list[str]]] = Field(None, description="Up to 4 strings that end the text "
                                                  "(they are not included in it).")
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64, description="Makes sampling reproducible: the same seed gives the same text, "
                                "alone or in any batch.")
    stream: bool = Field(False, description="Send the text as server-sent events while it is generated.")
    rules: bool = Field(False, description="Put the caller's steering rules (GET /v1/profile/rules) before the prompt.")
    stream_options: Optional[StreamOptions] = Field(None, description="Options for streaming.")
    user: Optional[str] = Field(None, description="OpenAI's end-user tag; not used (the API key identifies the caller).")
    # OpenAI fields accepted at their neutral value only (NEUTRAL): anything else would change the output
    presence_penalty: Optional[float] = Field(None, description="Only 0 is supported.")
    frequency_penalty: Optional[float] = Field(None, description="Only 0 is supported.")
    logit_bias: Optional[dict[str, float]] = Field(None, description="Only {} is supported.")
    metadata: Optional[dict[str, str]] = Field(None, description="Accepted and ignored (nothing is stored).")
    store: Optional[bool] = Field(None, description="Accepted and ignored: completions are never stored.")
    service_tier: Optional[str] = Field(None, description="Accepted and ignored.")

    @field_validator("*", mode="after")
    @classmethod
    def _neutral_only(cls, value: Any, info: ValidationInfo) -> Any:
        neutral = NEUTRAL.get(info.field_name)
        if neutral is not None and value is not None and value not in neutral:
            send = f"send {' or '.join(repr(n) for n in neutral)} or " if neutral else ""
            raise ValueError(f"{value!r:.40} is not supported by this server; {send}leave it out")
        return value


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens to generate (default: 64).")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Same as max_tokens (newer OpenAI name).")
    logprobs: Optional[bool] = Field(None, description="Only false is supported.")
    top_logprobs: Optional[int] = Field(None, description="Only 0 is supported.")
    tools: Optional[list[dict[str, Any]]] = Field(None, description="Only [] is supported (no tool calling).")
    tool_choice: Optional[Union[str, dict[str, Any]]] = Field(None, description="Only 'none' is supported.")
    parallel_tool_calls: Optional[bool] = Field(None, description="Accepted and ignored (no tools).")
    response_format: Optional[dict[str, Any]] = Field(None, description="Only {'type': 'text'} is supported.")


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1, description="The text to continue.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens to generate (default: 16, as OpenAI).")
    logprobs: Optional[int] = Field(None, description="Only 0 is supported.")
    echo: Optional[bool] = Field(None, description="Only false is supported.")
    best_of: Optional[int] = Field(None, description="Only 1 is supported.")
    suffix: Optional[str] = Field(None, description="Only null is supported.")


# field -> the values that leave the output as this server makes it (None, i.e. absent, always does)
NEUTRAL: dict[str, tuple] = {
    "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "logprobs": (False, 0),
    "top_logprobs": (0,), "tools": ([],), "tool_choice": ("none", "auto"), "response_format": ({"type": "text"},),
    "echo": (False,), "best_of": (1,), "suffix": (),
}


def with_runtime_inputs(base: type[_Sampling], inputs, max_new_tokens: int | None = None) -> type[_Sampling]:
    """``base`` with one optional body field per ``RuntimeInput`` (its name, wire type and description),
    and its token fields bounded by the host's ``max_new_tokens`` (so the schema states the real limit)."""
    fields = {spec.name: (Optional[Union[spec.annotation, StrictBool]] if spec.stored else Optional[spec.annotation],
                          Field(None, description=spec.description + (
                              " Required unless the server has a default." if spec.required else "")))
              for spec in inputs}   # a stored input also takes true: the caller's own, which the server keeps
    for name in ("max_tokens", "max_completion_tokens"):
        if max_new_tokens is not None and name in base.model_fields:
            description = base.model_fields[name].description
            fields[name] = (Optional[int], Field(None, ge=1, le=max_new_tokens, description=description))
    clash = sorted(n for n in fields if n not in ("max_tokens", "max_completion_tokens")
                   and (n in base.model_fields or hasattr(BaseModel, n)))
    if clash:
        raise ValueError(f"runtime input {clash[0]!r} would shadow the request field of that name")
    return create_model(base.__name__, __base__=base, __module__=__name__, **fields)


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = Field("assistant", description="Always 'assistant'.")
    content: str = Field(description="The generated text.")


FinishReason = Literal["stop", "length"]


class ChatChoice(BaseModel):
    index: int = Field(description="Position of this choice (always 0).")
    message: AssistantMessage = Field(description="The reply.")
    finish_reason: FinishReason = Field(description="'stop': end of sequence or a stop string; 'length': max_tokens.")


class ChatCompletion(BaseModel):
    id: str = Field(description="Id of this completion.")
    object: Literal["chat.completion"] = Field("chat.completion", description="Always 'chat.completion'.")
    created: int = Field(description="Unix time in seconds.")
    model: str = Field(description="The model that answered.")
    choices: list[ChatChoice] = Field(description="The replies (one).")
    usage: Usage = Field(description="Token counts.")


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = Field(None, description="Set in the first chunk only.")
    content: Optional[str] = Field(None, description="The next piece of text.")


class ChunkChoice(BaseModel):
    index: int = Field(description="Position of this choice (always 0).")
    delta: Delta = Field(description="What this chunk adds.")
    finish_reason: Optional[FinishReason] = Field(None, description="Set in the last chunk of the choice.")


class ChatCompletionChunk(BaseModel):
    id: str = Field(description="Id of this completion, the same in every chunk.")
    object: Literal["chat.completion.chunk"] = Field("chat.completion.chunk", description="Always 'chat.completion.chunk'.")
    created: int = Field(description="Unix time in seconds.")
    model: str = Field(description="The model that answers.")
    choices: list[ChunkChoice] = Field(description="One choice, or none in the usage chunk.")
    usage: Optional[Usage] = Field(None, description="Token counts, in the last chunk if stream_options.include_usage.")


class TextChoice(BaseModel):
    index: int = Field(description="Position of this choice (always 0).")
    text: str = Field(description="The generated text.")
    finish_reason: FinishReason = Field(description="'stop': end of sequence or a stop string; 'length': max_tokens.")
    logprobs: None = Field(None, description="Not supported; always null.")


class TextCompletion(BaseModel):
    id: str = Field(description="Id of this completion.")
    object: Literal["text_completion"] = Field("text_completion", description="Always 'text_completion'.")
    created: int = Field(description="Unix time in seconds.")
    model: str = Field(description="The model that answered.")
    choices: list[TextChoice] = Field(description="The continuations (one).")
    usage: Usage = Field(description="Token counts.")


class RuntimeInputCard(BaseModel):
    name: str = Field(description="The request body field.")
    required: bool = Field(description="Whether every request must send it (or the server has a default).")
    description: str = Field(description="What the value means.")


class ModelCard(BaseModel):
    id: str = Field(description="Model id to pass as `model`.")
    object: Literal["model"] = Field("model", description="Always 'model'.")
    created: int = Field(description="Unix time the server started.")
    owned_by: str = Field("parsona", description="Always 'parsona'.")
    n_objectives: Optional[int] = Field(None, description="Length of `preference`; null without a preference adapter.")
    runtime_inputs: list[RuntimeInputCard] = Field(default_factory=list, description="The per-request conditioning "
                                                   "fields this server takes (body fields of the same name).")


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[ModelCard] = Field(description="The served models.")


# -- users, adapters, history, jobs -----------------------------------------------------------
class UserCreated(BaseModel):
    user_id: str = Field(description=ID)
    api_key: str = Field(description="The user's API key. Shown once: only its hash is stored.")


class AdapterInfo(BaseModel):
    id: str = Field(description=ID)
    object: Literal["adapter"] = Field("adapter", description="Always 'adapter'.")
    name: str = Field(description="The name given at upload or training.")
    adapter_type: str = Field(description="'lora' (a PEFT LoRA).")
    created_at: float = Field(description="Unix time in seconds.")
    size_bytes: int = Field(description="Size of the adapter's files.")


class AdapterList(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[AdapterInfo] = Field(description="The caller's adapters, oldest first.")


class Deleted(BaseModel):
    id: str = Field(description="The deleted id.")
    object: Literal["adapter"] = Field("adapter", description="Always 'adapter'.")
    deleted: bool = Field(True, description="Always true.")


class HistoryItem(_Strict):
    text: str = Field(min_length=1, description="Something the user wrote or liked.")
    kind: Optional[str] = Field(None, description="Free label, e.g. 'email' or 'review'.")
    metadata: Optional[dict[str, Any]] = Field(None, description="Free JSON object stored with the item.")


class HistoryAppend(_Strict):
    items: list[HistoryItem] = Field(min_length=1, max_length=1000,
                                     description="Items to append: texts, or objects {text, kind, metadata}.",
                                     json_schema_extra={"items": {"anyOf": [{"type": "string"},
                                                                            {"$ref": "#/components/schemas/HistoryItem"}]}})

    @field_validator("items", mode="before")
    @classmethod
    def _texts_are_items(cls, value: Any) -> Any:
        # a bare string is shorthand for {"text": ...}; converting here keeps error paths like items[0].kind
        return [{"text": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class HistoryAppended(BaseModel):
    item_ids: list[str] = Field(description="Ids of the appended items, in order.")


class Profile(BaseModel):
    object: Literal["profile"] = Field("profile", description="Always 'profile'.")
    history_items: int = Field(description="Items in the caller's history.")
    persona: bool = Field(description="Whether the caller has a stored persona (then `persona: true` works).")
    persona_items: int = Field(description="History items the persona is pooled from (the newest, at most 1,000).")
    updated_at: Optional[float] = Field(None, description="Unix time of the newest item the persona pools.")


class RulesPut(_Strict):
    rules: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        max_length=20, description="The caller's steering rules, one line each (replaces the stored ones; [] clears).")


class Rules(BaseModel):
    object: Literal["rules"] = Field("rules", description="Always 'rules'.")
    rules: list[str] = Field(description="The caller's steering rules, in order.")
    source: Optional[Literal[RULE_SOURCES]] = Field(
        None, description="Who wrote them: the user; the miner, from the user's history; or the preference agent "
                          "(parsona train steering-rules --store).")
    updated_at: Optional[float] = Field(None, description="Unix time they were last replaced.")


class TrainRequest(_Strict):
    name: str = Field("trained", min_length=1, max_length=200, description="Name of the resulting adapter.")
    steps: int = Field(8, ge=1, le=200, description="AdamW steps.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate.")
    rank: int = Field(8, ge=1, le=64, description="LoRA rank.")
    max_items: int = Field(256, ge=1, le=10_000, description="Train on at most this many of the newest history items.")


class GenerateRequest(_Strict):
    name: str = Field("generated", min_length=1, max_length=200, description="Name of the resulting adapter.")
    description: Optional[str] = Field(None, min_length=1, max_length=4000,
                                       description="What the user is like, in their words: the experts nearest it are blended.")
    texts: Optional[list[Annotated[str, Field(max_length=20_000)]]] = Field(
        None, min_length=1, max_length=5, description="1 to 5 texts the user wrote (instead of a description).")
    experts: Optional[list[str]] = Field(None, min_length=1, max_length=32,
                                         description="Instead: ids to blend with `weights`, public experts (exp_…, "
                                                     "GET /v1/experts) or the caller's own LoRA adapters (adp_…).")
    weights: Optional[list[float]] = Field(None, min_length=1, max_length=32,
                                           description="One weight per id in `experts`, ≥ 0 and summing to 1.")
    k: int = Field(4, ge=1, le=32, description="Experts blended: the k nearest the description.")
    tau: float = Field(0.1, ge=0.001, le=100, description="Softmax temperature over the cosine similarities.")
    rank: Optional[int] = Field(None, ge=1, le=256, description="Compact the blend to this rank by SVD "
                                "(omitted: exact, rank Σ r_i).")
    method: Literal["blend", "cvae"] = Field("blend", description="'blend': the top-k softmax blend; 'cvae': "
                                             "SG-LoRA's generator conditioned on those experts.")


class GeneratedExpert(BaseModel):
    id: str = Field(description="A public expert (exp_…) or one of the caller's adapters (adp_…).")
    weight: float = Field(description="Its weight in the blend.")


class Generated(AdapterInfo):
    experts: list[GeneratedExpert] = Field(description="What was blended: the chosen experts, most weight first, or "
                                           "with method 'cvae' every expert of the bank and its coefficient (which may "
                                           "be negative: the generated update is Σ c_i ΔW_i with Σ c_i = 1).")
    max_relative_error: Optional[float] = Field(None, description="The compact blend's largest relative "
                                                "Frobenius error over modules (with `rank`).")


class ExpertInfo(BaseModel):
    id: str = Field(description="The expert's id (exp_…).")
    object: Literal["expert"] = Field("expert", description="Always 'expert'.")
    name: str = Field(description="The expert's name.")
    description: str = Field(description="What the expert's LoRA was trained on.")


class ExpertList(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[ExpertInfo] = Field(description="The public experts, oldest first.")


class Job(BaseModel):
    id: str = Field(description=ID)
    object: Literal["job"] = Field("job", description="Always 'job'.")
    kind: str = Field(description="What the job does ('lora': LoRA fine-tuning on the user's history).")
    status: Literal["queued", "running", "succeeded", "failed"] = Field(description="Where the job is.")
    progress: float = Field(description="Fraction done, 0 to 1.")
    message: str = Field(description="Latest progress message or the error.")
    created_at: float = Field(description="Unix time in seconds.")
    updated_at: float = Field(description="Unix time in seconds.")
    adapter_id: Optional[str] = Field(None, description="The trained adapter, once the job succeeded.")


class Health(BaseModel):
    status: Literal["ok"] = Field("ok", description="Always 'ok' when the server answers.")
    model: str = Field(description="The served model id.")


class ErrorBody(BaseModel):
    message: str = Field(description="What is wrong and how to fix it.")
    type: str = Field(description="'invalid_request_error', 'authentication_error', 'not_found_error', ...")
    param: Optional[str] = Field(None, description="The request field at fault, if one is.")
    code: Optional[str] = Field(None, description="A short machine-readable code.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="The error.")


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429)}   # what every route may answer
