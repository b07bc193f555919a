"""Writers: chats in, replies out (``persona.agent.Writer``), from the host's model or an OpenAI-compatible
endpoint, so a learner that needs a language model (the steering-rules agent) takes either unchanged.

    large = HostWriter(host, max_new_tokens=96)                                   # the host's base model
    large = EndpointWriter("http://localhost:8000/v1", model="llama-3-8b", api_key="...")   # any /chat/completions
    small = HostWriter(host, conditioning={"adapter": "rules_lora"})              # a LoRA the host has loaded

Both decode greedily by default (temperature 0), so a learner's output is reproducible.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from parsona.errors import ConfigError


class HostWriter:
    """Replies from a ``parsona.host.Host``, ``batch_size`` chats per batch, each row under ``conditioning``."""

    def __init__(self, host, max_new_tokens: int = 96, conditioning: Mapping[str, Any] | None = None,
                 batch_size: int = 16, temperature: float = 0.0, progress: str | None = None):
        self.host, self.max_new_tokens, self.conditioning = host, max_new_tokens, dict(conditioning or {})
        self.batch_size, self.temperature, self.progress = batch_size, temperature, progress

    @property
    def key(self) -> str:
        """What decides its replies (the model's name or path, conditioning, decoding): what it wrote is kept
        under this key. It cannot see weights: a model retrained in place keeps its key."""
        name = getattr(getattr(self.host.model, "config", None), "_name_or_path", "") or type(self.host.model).__name__
        return f"host:{name}:{sorted(self.conditioning.items())}:{self.max_new_tokens}:{self.temperature}"

    def __call__(self, chats: Sequence[list[dict]]) -> list[str]:
        from tqdm.auto import tqdm

        from parsona.host import Request

        out: list[str] = []
        starts = range(0, len(chats), self.batch_size)
        for start in tqdm(starts, desc=self.progress, leave=False, disable=self.progress is None or len(starts) < 2):
            batch = [Request(messages=m, max_new_tokens=self.max_new_tokens, conditioning=self.conditioning,
                             temperature=self.temperature) for m in chats[start:start + self.batch_size]]
            out += [c.text for c in self.host.generate(batch)]
        return out


class EndpointWriter:
    """Replies from an OpenAI-compatible ``POST {base_url}/chat/completions``, one chat per request.

    base_url: e.g. ``http://localhost:8000/v1`` (vLLM, llama.cpp's server, ``parsona serve``, OpenAI).
    api_key:  sent as ``Authorization: Bearer``; None sends none.
    client:   an ``httpx.Client`` to send through (tests pass FastAPI's TestClient); None makes one.
    A reply that is not a completion raises ConfigError naming ``base_url`` with the server's status.
    """

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None, max_tokens: int = 96,
                 temperature: float = 0.0, timeout: float = 120.0, client=None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", "Give the endpoint's URL, e.g. http://localhost:8000/v1.",
                              problem=f"got {base_url!r:.60}")
        self.base_url, self.model, self.api_key = base_url.rstrip("/"), model, api_key
        self.max_tokens, self.temperature, self.timeout, self.client = max_tokens, temperature, timeout, client

    @property
    def key(self) -> str:
        """The endpoint, model and decoding: what it wrote is kept under this key. Never a secret: not the API
        key, nor a URL's user:password or query (``?key=...``)."""
        from urllib.parse import urlsplit

        url = urlsplit(self.base_url)
        where = f"{url.scheme}://{url.hostname or ''}{f':{url.port}' if url.port else ''}{url.path}"
        return f"endpoint:{where}:{self.model}:{self.max_tokens}:{self.temperature}"

    def __call__(self, chats: Sequence[list[dict]]) -> list[str]:
        import httpx

        client = self.client or httpx.Client(timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            return [self._reply(client.post(f"{self.base_url}/chat/completions", headers=headers, json={
                "model": self.model, "messages": chat, "max_tokens": self.max_tokens,
                "temperature": self.temperature})) for chat in chats]
        except httpx.HTTPError as exc:
            raise ConfigError("base_url", "Check that the endpoint is up and reachable.",
                              problem=f"{type(exc).__name__}: {str(exc)[:160]}") from None
        finally:
            if self.client is None:
                client.close()

    @staticmethod
    def _reply(response) -> str:
        """The reply's text. An error says the status only: a server may echo the request (the user's
        texts) in its error body."""
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            text = None
        status = response.status_code
        if status in (401, 403):
            raise ConfigError("api_key", "Give the endpoint's key (the recipe reads it from --api-key-env).",
                              problem=f"status {status}")
        if status != 200 or not isinstance(text, str):
            raise ConfigError("base_url", "Point it at an OpenAI-compatible /chat/completions endpoint, and check "
                              "the model name.", problem=f"status {status}" + ("" if status != 200 else ", no reply text"))
        return text
