"""The HTTP API: thin FastAPI handlers over the Host (generation), the Store and the Trainer.

OpenAI-shaped, so the official ``openai`` client works unchanged; Parsona's extras travel in the
body (``extra_body={"preference": [0.2, 0.8], "adapter": "adp_..."}``), one field per runtime input
the host's adapters declared (``host.runtime_inputs``), so the schema follows what is attached. Every route but
``/healthz`` needs ``Authorization: Bearer <key>``: a user's key, or for ``POST /v1/users`` the
admin key. Every lookup is scoped to the caller, and someone else's id, a missing id and a
malformed one all answer the same 404, so a caller cannot learn what others have.
"""

# No `from __future__ import annotations`: the request bodies are classes built in create_app from the
# host's runtime inputs, and FastAPI must see them as objects, not as names to look up in this module.
import asyncio
import hmac
import json
import secrets
import time
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from parsona.errors import ConfigError
from parsona.host import Completion, Host, Request as HostRequest
from parsona.store import NotFound, Store

from . import schemas as S
from .batcher import Batcher
from .guard import ApiError, Guard, RateLimiter, install_error_handlers, unauthorized
from .metrics import Metrics
from .profile import profile_routes
from .training import Trainer

from .uploads import extract_archive

ERRORS = S.ERRORS
DISCONNECT_POLL_S = 0.5  # how often a waiting handler checks that its client is still there
ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/zip", "application/octet-stream")


def create_app(host: Host, store: Store, *, model_id: str, admin_key: str | None = None,
               trainer: Trainer | None = None, max_body_bytes: int = 1 << 20, max_upload_bytes: int = 64 << 20,
               max_batch_size: int = 16, batch_wait_s: float = 0.01, rate_limit: float = 20.0, rate_burst: int = 40,
               body_timeout_s: float = 30.0, personas=None, generated=None, rules_population=None) -> FastAPI:
    """The ASGI app. ``admin_key`` None disables ``POST /v1/users``; ``trainer`` None disables training;
    ``personas`` (``parsona.personalize.Personas``) embeds history as it arrives and reports personas;
    ``generated`` (``parsona.generate.GeneratedLoRAs``) makes LoRAs from descriptions (None: disabled);
    ``rules_population`` (texts) is the contrast the steering-rule miner learns a user's rules against
    (None: learning is disabled; users may still write their own).
    ``rate_limit`` requests per second per user (bursts of ``rate_burst``; 0: no limit); a body not
    received within ``body_timeout_s`` is a 408."""
    metrics = Metrics()
    batcher = Batcher(host, metrics, max_batch_size=max_batch_size, max_wait_s=batch_wait_s)
    started = int(time.time())
    bearer = HTTPBearer(auto_error=False, description="A user's API key (admin key for POST /v1/users).")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.recover()        # after a crash: sweep dead servers' temp folders, fail the jobs they were running
        if trainer is not None:
            trainer.start()    # requeue the jobs the store still holds as queued (the old queue died with its server)
        yield
        batcher.close()
        store.release_temp()   # a clean stop leaves no temp folder (uvicorn re-raises SIGTERM: no code runs after it)

    app = FastAPI(title="Parsona", version="0.1.0", lifespan=lifespan,
                  description="One base model, many users: OpenAI-compatible generation where every request "
                              "carries its own preference vector and its own LoRA.")
    app.state.host, app.state.store, app.state.batcher, app.state.metrics = host, store, batcher, metrics
    app.add_middleware(Guard, metrics=metrics, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
                       large_bodies={("POST", "/v1/adapters"): max_upload_bytes})
    limiter = RateLimiter(rate_limit, rate_burst)

    def user_of(credentials: Optional[HTTPAuthorizationCredentials]) -> str | None:
        return store.authenticate(credentials.credentials) if credentials is not None else None

    def is_admin(credentials: Optional[HTTPAuthorizationCredentials]) -> bool:
        return bool(admin_key) and credentials is not None and hmac.compare_digest(
            credentials.credentials.encode(), admin_key.encode())

    def caller(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> str:
        user_id = user_of(credentials)
        if user_id is None:
            raise unauthorized()
        limiter.take(user_id)  # 429 past the user's rate: one user cannot starve the others
        return user_id

    def admin(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        if not admin_key:
            raise ApiError(403, "permission_error", "Creating users is disabled: start the server with "
                           "PARSONA_ADMIN_KEY set.", "Authorization", "admin_disabled")
        if not is_admin(credentials):
            raise unauthorized()

    def is_authenticated(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme.lower() == "bearer" else None
        return is_admin(creds) if request.url.path == "/v1/users" else user_of(creds) is not None

    install_error_handlers(app, is_authenticated)
    app.openapi = lambda: openapi_without_422(app)
    ChatRequest = S.with_runtime_inputs(S.ChatCompletionRequest, host.runtime_inputs, host.max_new_tokens_limit)
    CompletionRequest = S.with_runtime_inputs(S.CompletionRequest, host.runtime_inputs, host.max_new_tokens_limit)

    # -- generation ---------------------------------------------------------------------------
    def to_host(body: S._Sampling, user_id: str, max_tokens: int, **text) -> HostRequest:
        if body.model != model_id:
            raise ApiError(404, "not_found_error", f"model: unknown model {body.model[:80]!r}. Use {model_id!r} "
                           "(GET /v1/models).", "model", "model_not_found")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        conditioning = {spec.name: getattr(body, spec.name) for spec in host.runtime_inputs}
        return HostRequest(**text, user_id=user_id, conditioning={k: v for k, v in conditioning.items() if v is not None},
                           max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                           stop=stop, seed=body.seed, rules=body.rules)

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, responses=ERRORS, tags=["generation"],
              summary="Chat completion (OpenAI-compatible; SSE when stream is true)")
    async def chat_completions(body: ChatRequest, request: Request, user_id: str = Depends(caller)):
        max_tokens = body.max_completion_tokens or body.max_tokens or 64
        # tokenizing a long prompt takes a while: off the event loop, so /healthz and streams go on
        prepared = await run_in_threadpool(host.prepare, to_host(body, user_id, max_tokens,
                                                                 messages=[m.model_dump() for m in body.messages]))
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            def chunk(delta: dict, finish=None, usage=None, choices=True) -> dict:
                return S.ChatCompletionChunk(id=cid, created=created, model=model_id, usage=usage, choices=[
                    S.ChunkChoice(index=0, delta=S.Delta(**delta), finish_reason=finish)] if choices else []).model_dump()
            return sse(prepared, body, lambda text: chunk({"content": text}), lambda done: chunk({}, done.finish_reason),
                       lambda usage: chunk({}, usage=usage, choices=False), first=chunk({"role": "assistant"}))
        done = await answered(request, prepared)
        return S.ChatCompletion(id=cid, created=created, model=model_id, usage=usage_of(done), choices=[
            S.ChatChoice(index=0, message=S.AssistantMessage(content=done.text), finish_reason=done.finish_reason)])

    @app.post("/v1/completions", response_model=S.TextCompletion, responses=ERRORS, tags=["generation"],
              summary="Text completion (OpenAI-compatible; SSE when stream is true)")
    async def completions(body: CompletionRequest, request: Request, user_id: str = Depends(caller)):
        prepared = await run_in_threadpool(host.prepare, to_host(body, user_id, body.max_tokens or 16, prompt=body.prompt))
        cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            def chunk(text: str, finish=None, usage: S.Usage | None = None, choices=True) -> dict:
                return {"id": cid, "object": "text_completion", "created": created, "model": model_id,
                        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}] if choices else [],
                        **({"usage": usage.model_dump()} if usage is not None else {})}
            return sse(prepared, body, chunk, lambda done: chunk("", done.finish_reason),
                       lambda usage: chunk("", usage=usage, choices=False))
        done = await answered(request, prepared)
        return S.TextCompletion(id=cid, created=created, model=model_id, usage=usage_of(done), choices=[
            S.TextChoice(index=0, text=done.text, finish_reason=done.finish_reason)])

    async def answered(request: Request, prepared) -> Completion:
        """The batcher's answer; if the client disconnects first, its row stops decoding."""
        task = asyncio.ensure_future(batcher.submit(prepared))
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                prepared.cancel.set()
                task.cancel()
        return task.result()

    def sse(prepared, body, piece, last, usage_chunk, first: dict | None = None) -> StreamingResponse:
        """Server-sent events: text pieces as they become final, the finish reason, then [DONE]."""
        async def events():
            queue: asyncio.Queue = asyncio.Queue()
            task = asyncio.ensure_future(batcher.submit(prepared, on_delta=queue.put_nowait))
            task.add_done_callback(lambda _: queue.put_nowait(None))  # runs after every delta was queued
            try:
                if first is not None:
                    yield f"data: {json.dumps(first)}\n\n"
                while (text := await queue.get()) is not None:
                    yield f"data: {json.dumps(piece(text))}\n\n"
            finally:  # the client left mid-stream (the generator is closed): stop decoding its row
                if not task.done():
                    prepared.cancel.set()
                    task.cancel()
            exc = task.exception()
            if exc is not None:  # the headers are sent: the error travels as an event
                known = isinstance(exc, (ConfigError, NotFound))
                error = {"message": str(exc) if known else "Internal error.", "param": getattr(exc, "field", None),
                         "type": "invalid_request_error" if known else "server_error"}
                yield f"data: {json.dumps({'error': error})}\n\n"
            else:
                done: Completion = task.result()
                yield f"data: {json.dumps(last(done))}\n\n"
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield f"data: {json.dumps(usage_chunk(usage_of(done)))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models", response_model=S.ModelList, responses=ERRORS, tags=["generation"], summary="The served model")
    def models(user_id: str = Depends(caller)):
        m = next((a.config.n_objectives for a in host.adapters if hasattr(a.config, "n_objectives")), None)
        inputs = [S.RuntimeInputCard(name=i.name, required=i.required and i.name not in host.defaults,
                                     description=i.description) for i in host.runtime_inputs]
        return S.ModelList(data=[S.ModelCard(id=model_id, created=started, n_objectives=m, runtime_inputs=inputs)])

    # -- users --------------------------------------------------------------------------------
    @app.post("/v1/users", response_model=S.UserCreated, status_code=201, responses=ERRORS, tags=["admin"],
              summary="Create a user and its API key (admin key)", dependencies=[Depends(admin)])
    def create_user():
        user_id, api_key = store.create_user()
        return S.UserCreated(user_id=user_id, api_key=api_key)

    # -- adapters -----------------------------------------------------------------------------
    def info(record: dict) -> S.AdapterInfo:
        return S.AdapterInfo(id=record["adapter_id"], name=record["name"], adapter_type=record["adapter_type"],
                             created_at=record["created_at"], size_bytes=record["size_bytes"])

    @app.get("/v1/adapters", response_model=S.AdapterList, responses=ERRORS, tags=["adapters"],
             summary="The caller's adapters")
    def list_adapters(user_id: str = Depends(caller)):
        return S.AdapterList(data=[info(r) for r in store.list_adapters(user_id)])

    @app.post("/v1/adapters", response_model=S.AdapterInfo, status_code=201, responses=ERRORS, tags=["adapters"],
              summary="Upload a PEFT LoRA directory as a tar, tar.gz or zip archive (the request body)",
              openapi_extra={"requestBody": {"required": True, "description": "The archive's bytes: a saved PEFT LoRA "
                             "directory (adapter_config.json + adapter_model.safetensors), flat or in one folder.",
                             "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ARCHIVE_TYPES}}})
    async def upload_adapter(request: Request, user_id: str = Depends(caller),
                             name: str = Query("uploaded", min_length=1, max_length=200,
                                               description="A name for the adapter (shown in listings).")):
        try:
            S.check_text(name)
        except ValueError as exc:
            raise ConfigError("name", "Send valid Unicode text.", problem=str(exc)) from None
        data = await request.body()  # the Guard already refused anything over the upload limit
        if not data:
            raise ConfigError("file", "Send the archive's bytes as the request body.", problem="the body is empty")
        return info(await run_in_threadpool(store_upload, user_id, data, name))

    def store_upload(user_id: str, data: bytes, name: str) -> dict:
        from parsona.adapters.peft_format import read_peft_lora

        store.require_adapter_slot(user_id)  # QuotaExceeded before unpacking anything
        with store.temp_dir("upload-") as tmp:   # inside the store: swept on restart if we are killed mid-upload
            extract_archive(data, tmp, max_bytes=4 * max_upload_bytes)
            try:
                weights = read_peft_lora(str(tmp))
            except ConfigError as exc:  # name the request field, not our temporary path
                raise ConfigError("file", exc.fix, problem=f"{exc.field.replace(f'{tmp}/', '')}: {exc.problem}") from None
            host.check_lora(weights)
            adapter_id = store.put_adapter(user_id, tmp, "lora", name)
        return store.get_adapter(user_id, adapter_id)

    @app.get("/v1/adapters/{adapter_id}", response_model=S.AdapterInfo, responses=ERRORS, tags=["adapters"],
             summary="One of the caller's adapters")
    def get_adapter(adapter_id: str, user_id: str = Depends(caller)):
        return info(store.get_adapter(user_id, adapter_id))

    @app.delete("/v1/adapters/{adapter_id}", response_model=S.Deleted, responses=ERRORS, tags=["adapters"],
                summary="Delete one of the caller's adapters")
    def delete_adapter(adapter_id: str, user_id: str = Depends(caller)):
        store.delete_adapter(user_id, adapter_id)
        host.evict(adapter_id)
        return S.Deleted(id=adapter_id)

    @app.post("/v1/adapters/generate", response_model=S.Generated, status_code=201,
              responses={**ERRORS, 501: {"model": S.ErrorResponse}},
              tags=["adapters"], summary="A new LoRA of the caller's, blended from experts (no training): "
              "from a description, a few texts, or explicit weights")
    def generate(body: S.GenerateRequest, user_id: str = Depends(caller)):
        if generated is None:
            raise ApiError(501, "not_implemented_error", "Generated LoRAs are not enabled on this server: build an "
                           "expert bank (parsona build-expert-bank) and restart it.", None, "disabled")
        adapter_id, made = generated.create(user_id, **body.model_dump(exclude_unset=True))
        experts = [S.GeneratedExpert(id=i, weight=w) for i, w in zip(made["experts"], made["weights"])]
        return S.Generated(**info(store.get_adapter(user_id, adapter_id)).model_dump(), experts=experts,
                           max_relative_error=made.get("max_relative_error"))

    @app.get("/v1/experts", response_model=S.ExpertList, responses=ERRORS, tags=["adapters"],
             summary="The public expert LoRAs a generated LoRA may blend")
    def list_experts(user_id: str = Depends(caller)):
        encoder = generated.encoder.key if generated is not None else None   # the ones this server blends
        return S.ExpertList(data=[S.ExpertInfo(id=e["expert_id"], name=e["name"], description=e["description"])
                                  for e in store.experts.list(encoder)] if encoder else [])

    # -- profile and training -----------------------------------------------------------------
    app.include_router(profile_routes(store, host, caller, personas=personas, rules_population=rules_population))

    @app.post("/v1/adapters/train", response_model=S.Job, status_code=202, responses=ERRORS, tags=["adapters"],
              summary="Start a LoRA fine-tune on the caller's history (a background job)")
    def train(body: Optional[S.TrainRequest] = None, user_id: str = Depends(caller)):
        if trainer is None:
            raise ApiError(501, "not_implemented_error", "Training is not enabled on this server.", None, "disabled")
        params = (body or S.TrainRequest()).model_dump()
        return job(store.get_job(user_id, trainer.submit(user_id, params)))

    def job(record: dict) -> S.Job:
        return S.Job(id=record["job_id"], **{k: record[k] for k in ("kind", "status", "progress", "message",
                                                                      "created_at", "updated_at", "adapter_id")})

    @app.get("/v1/jobs/{job_id}", response_model=S.Job, responses=ERRORS, tags=["adapters"],
             summary="One of the caller's jobs")
    def get_job(job_id: str, user_id: str = Depends(caller)):
        return job(store.get_job(user_id, job_id))

    # -- operations ---------------------------------------------------------------------------
    @app.get("/healthz", response_model=S.Health, tags=["operations"], summary="Liveness (no key needed)")
    def healthz():
        return S.Health(model=model_id)

    @app.get("/metrics", response_class=PlainTextResponse, responses=ERRORS, tags=["operations"],
             summary="Prometheus metrics: requests, latency, batch sizes, resident LoRAs (admin key: it is "
                     "every user's traffic)")
    def metrics_text(credentials: Optional[HTTPAuthorizationCredentials] = Security(bearer)):
        if not is_admin(credentials):
            raise unauthorized()
        return metrics.render(len(host.resident_loras), host.max_resident_loras, batcher.queued)

    return app


def openapi_without_422(app: FastAPI) -> dict:
    """FastAPI documents a 422 on every route; this API answers invalid bodies with 400 (OpenAI's code)."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def usage_of(done: Completion) -> S.Usage:
    return S.Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                   total_tokens=done.prompt_tokens + done.completion_tokens)
