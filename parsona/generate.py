"""Generated LoRAs (SG-LoRA, arXiv 2509.10535): a new user's adapter from a description, a few texts or
explicit weights, blended from a bank of expert LoRAs with no gradient step.

    experts = Experts.public(store, encoder.key)                 # the store's public bank (or Experts.of(...))
    lora, info = generate_lora(experts, encoder, texts=emails[:5])          # top-K blend, exact
    lora, info = generate_lora(experts, encoder, description="...", rank=8)  # compacted to rank 8
    lora, info = generate_lora(experts, encoder, description="...", generator=fit_generator(experts))  # CVAE

The description vector is the encoder's embedding of what the user wrote about themselves, or the mean
of at most five of their texts; the top K experts by cosine similarity of their descriptions
(``persona.NeighborIndex``, faiss) are weighted softmax(cos / τ) (``persona.expert_weights``). The result
is a PEFT LoRA, so the per-user LoRA bank serves it unchanged. :class:`GeneratedLoRAs` makes it one of a
user's adapters, blending only what that user may: the public bank and their own adapters.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from parsona.errors import ConfigError
from parsona.persona import HistoryEncoder, UserProfile, expert_weights
from parsona.persona.experts import K, TAU

MAX_TEXTS = 5
MAX_RANK = 256         # of a stored generated LoRA: the host keeps it resident like any user's LoRA
MAX_BLEND_RANK = 1024  # Σ r_i of an explicit blend, even when compacted (its QR and SVD cost grow with it)
EXPERT_CACHE_BYTES = 512 << 20   # public experts kept in memory: ~50 rank-8 LoRAs on every SmolLM2 Linear


class ExpertCache:
    """Public experts' LoRAs kept in memory between requests, at most ``max_bytes`` of them (the least
    recently used go first; 0: none kept). Reading an expert's safetensors file and checking it costs
    ~50 ms, so a 17-expert blend spent most of its second on reads; the bank is public, so one cache
    serves every user. An expert whose folder changed (any file's size, times or inode) is read again.
    The LoRAs handed out are shared: callers must not modify them (the blends build new tensors; a test
    holds them to it)."""

    def __init__(self, max_bytes: int = EXPERT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[tuple, object, int]] = OrderedDict()   # path -> (stamp, lora, bytes)
        self._bytes = 0
        self._lock = threading.Lock()                                   # requests run on a thread pool

    def load(self, directory) -> object:
        """The PEFT LoRA in ``directory`` (as ``read_peft_lora``), from memory when the file is unchanged."""
        from parsona.adapters.peft_format import read_peft_lora
        from parsona.store_checks import tree_signature

        key = os.fspath(directory)
        try:
            stamp = tree_signature(Path(key))                           # any file rewritten, even with mtime kept
        except OSError:
            stamp = None                                                # read_peft_lora names the missing folder
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and stamp is not None and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
        lora = read_peft_lora(directory)
        size = sum(A.nbytes + B.nbytes for A, B in lora.factors.values())
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= old[2] if old else 0
            if stamp is not None and size <= self.max_bytes:
                self._items[key] = (stamp, lora, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    self._bytes -= self._items.popitem(last=False)[1][2]
        return lora

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass
class Experts:
    """The experts one generation may blend: ids, description vectors (n, d) and a loader by row (only
    the chosen experts' files are read)."""

    ids: list[str]
    vectors: np.ndarray
    load: Callable[[int], object]

    @classmethod
    def of(cls, loras: Sequence, vectors, ids: Sequence[str] | None = None) -> "Experts":
        """Experts held in memory (LoRAWeights), e.g. a benchmark's."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(loras) != len(vectors):
            raise ConfigError("vectors", "Give one description vector per expert.",
                              problem=f"{len(vectors)} vectors for {len(loras)} experts")
        return cls(list(ids or map(str, range(len(loras)))), vectors, lambda i: loras[i])

    @classmethod
    def public(cls, store, encoder_key: str, cache: ExpertCache | None = None) -> "Experts":
        """The store's public bank, described under ``encoder_key`` (``HistoryEncoder.key``), its LoRAs read
        through ``cache`` if given."""
        from parsona.adapters.peft_format import read_peft_lora

        read = cache.load if cache is not None else read_peft_lora
        ids, vectors = store.experts.vectors(encoder_key)
        return cls(ids, vectors, lambda i: read(store.experts.path(ids[i])))


def describe(encoder: HistoryEncoder, description: str | None = None, texts=None, max_texts: int = MAX_TEXTS) -> np.ndarray:
    """(d,) a new user's description vector: the embedding of what they wrote about themselves, or the
    mean persona of at most ``max_texts`` of their texts."""
    if (description is None) == (texts is None):
        raise ConfigError("description", "Give a description or a few texts (one of them).",
                          problem="both given" if description is not None else "neither given")
    if description is not None:
        if not isinstance(description, str) or not description.strip():
            raise ConfigError("description", "Write a sentence or two about the user.", problem="empty")
        return encoder.transform([description])[0]
    if isinstance(texts, str):
        raise ConfigError("texts", "Pass a list of texts, not one string.", problem="got a string")
    texts = [t for t in list(texts)[:max_texts] if isinstance(t, str) and t.strip()]
    if not texts:
        raise ConfigError("texts", f"Give 1 to {max_texts} non-empty texts the user wrote.", problem="none given")
    return UserProfile.from_history("new", encoder.transform(texts)).persona


def generate_lora(experts: Experts, encoder: HistoryEncoder, *, description: str | None = None, texts=None,
                  k: int = K, tau: float = TAU, rank: int | None = None, generator=None):
    """(LoRAWeights, info): SG-LoRA's LoRA for a new user described by ``description`` or ``texts``.

    The top-``k`` experts' softmax(cos / τ) blend, exact (rank Σ r_i) or with ``rank`` its best rank-``rank``
    approximation; with a fitted ``generator`` (:func:`fit_generator`) the CVAE's sample conditioned on
    those experts instead. info: the chosen expert ids and weights (and the compact error)."""
    from parsona.adapters.generated_lora import blend_exact
    from parsona.adapters.generated_lora.blend import compact

    if len(experts.ids) == 0:
        raise ConfigError("experts", "Build the expert bank first (parsona build-expert-bank).", problem="empty bank")
    query = describe(encoder, description, texts)
    if query.shape != experts.vectors.shape[1:]:
        raise ConfigError("encoder", "Describe users with the encoder the bank was described with.",
                          problem=f"a {query.shape[0]}-number description, experts of {experts.vectors.shape[1]}")
    rows, weights = expert_weights(experts.vectors, query, k=k, tau=tau)
    info = {"experts": [experts.ids[i] for i in rows], "weights": weights.tolist()}
    if generator is not None:                                   # Σ c_j ΔW_j over the whole bank, c_j may be < 0
        lora, extra = generator.generate(rows, weights, rank=rank)
        return lora, {**info, "chosen": info["experts"], "experts": list(experts.ids),
                      "weights": extra.pop("coefficients"), **extra}
    lora = blend_exact([experts.load(int(i)) for i in rows], weights)
    if rank is None:
        return lora, info
    small, errors = compact(lora, rank)
    return small, {**info, "max_relative_error": max(errors.values())}


def fit_generator(experts: Experts, k: int = K, tau: float = TAU, **params):
    """SG-LoRA's CVAE (``LoRAGenerator(**params)``) fitted on the bank, each expert conditioned on the
    top-``k`` of the *other* experts nearest its description (as a new user's is)."""
    from parsona.adapters.generated_lora import LoRAGenerator

    n = len(experts.ids)
    neighbours = []
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        rows, w = expert_weights(experts.vectors[others], experts.vectors[i], k=k, tau=tau)
        neighbours.append((others[rows], w))
    return LoRAGenerator(**params).fit([experts.load(i) for i in range(n)], neighbours)


class GeneratedLoRAs:
    """Generated LoRAs as a user's adapters (``POST /v1/adapters/generate``, ``parsona generate-lora``).

    A user blends only what they may: from a description or texts, the public bank's top-K; from
    explicit ``experts`` and ``weights``, public experts (``exp_…``) and their own LoRA adapters
    (``adp_…``): another user's id is not found, exactly as a missing one. ``check`` (e.g.
    ``host.check_lora``) vets the result before it is stored. The CVAE is fitted once per bank, with
    this object's ``k`` and ``tau`` (a request's own k and τ only choose its condition), so no request
    can make the server refit it."""

    def __init__(self, store, encoder: HistoryEncoder, check: Callable | None = None, k: int = K, tau: float = TAU,
                 cache_bytes: int = EXPERT_CACHE_BYTES):
        self.store, self.encoder, self.check, self.k, self.tau = store, encoder, check, k, tau
        self.cache = ExpertCache(cache_bytes)                           # the public bank's LoRAs, in memory
        self._generator: tuple[tuple, object] | None = None             # (bank ids, fitted generator)
        self._lock = threading.Lock()                                   # requests run on a thread pool

    def create(self, user_id: str, *, name: str = "generated", **how) -> tuple[str, dict]:
        """Make and store the user's new LoRA adapter (``how``: :meth:`make`'s keywords); (adapter_id, info)."""
        self.store.require_adapter_slot(user_id)                        # QuotaExceeded before any work
        lora, info = self.make(user_id, **how)
        return self._store(user_id, lora, name), info

    def make(self, user_id: str | None, *, description: str | None = None, texts=None,
             experts: Sequence[str] | None = None, weights: Sequence[float] | None = None, k: int | None = None,
             tau: float | None = None, rank: int | None = None, method: str | None = None) -> tuple:
        """(LoRAWeights, info) from a description, texts, or ``experts`` with ``weights`` (public expert ids,
        and with a ``user_id`` that user's own LoRA adapters). info: what was blended (expert ids and
        weights; for the CVAE every bank expert and its coefficient) and the compact error."""
        if experts is not None or weights is not None:
            given = [f for f, v in (("description", description), ("texts", texts), ("k", k), ("tau", tau),
                                    ("method", method)) if v is not None]
            if given:
                raise ConfigError(given[0], "Leave it out with explicit experts and weights (it chooses experts "
                                  "from a description).", problem="both given")
            return self._explicit(user_id, experts, weights, rank)
        method = method or "blend"
        if method not in ("blend", "cvae"):
            raise ConfigError("method", 'Use "blend" (top-K softmax blend) or "cvae" (SG-LoRA\'s generator).',
                              problem=f"got {method!r:.40}")
        bank = Experts.public(self.store, self.encoder.key, self.cache)
        generator = self._fitted(bank) if method == "cvae" else None
        return generate_lora(bank, self.encoder, description=description, texts=texts,
                             k=self.k if k is None else k, tau=self.tau if tau is None else tau, rank=rank,
                             generator=generator)

    def _explicit(self, user_id: str | None, ids, weights, rank: int | None):
        from parsona.adapters.generated_lora import blend_compact, blend_exact
        from parsona.adapters.generated_lora.blend import check_weights
        from parsona.adapters.peft_format import peft_lora_rank, read_peft_lora

        if weights is None:
            raise ConfigError("weights", "Give one weight per id in experts, summing to 1.", problem="missing")
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ConfigError("experts", "Give expert or adapter ids, one per weight.", problem="no experts")
        if len(set(map(str, ids))) != len(ids):
            raise ConfigError("experts", "Name each expert once (add up its weights instead).", problem="an id repeats")
        check_weights(len(ids), weights)                                # before any file is read
        paths = [self._path(user_id, ident, f"experts[{n}]") for n, ident in enumerate(ids)]
        total = sum(peft_lora_rank(path) for path in paths)             # from the configs: nothing loaded yet
        if total > MAX_BLEND_RANK or (rank is None and total > MAX_RANK):
            limit = MAX_BLEND_RANK if total > MAX_BLEND_RANK else MAX_RANK
            raise ConfigError("rank" if total <= MAX_BLEND_RANK else "experts",
                              f"Blend experts of total rank ≤ {limit}" + ("" if limit == MAX_BLEND_RANK else
                              f", or pass a rank ≤ {MAX_RANK} to compact the blend."), problem=f"their ranks sum to {total}")
        loras = [self.cache.load(path) if _public(user_id, ident) else read_peft_lora(path)   # a user's own: not kept
                 for path, ident in zip(paths, ids)]
        info = {"experts": list(ids), "weights": list(weights)}
        if rank is None:
            return blend_exact(loras, weights), info
        lora, errors = blend_compact(loras, weights, rank)
        return lora, {**info, "max_relative_error": max(errors.values())}

    def _path(self, user_id: str | None, ident, field: str):
        from parsona.store import NotFound

        if _public(user_id, ident):
            return self.store.experts.path(ident, field=field)
        try:
            record = self.store.get_adapter(user_id, ident)             # only the caller's own
        except NotFound:
            raise NotFound(field) from None
        if record["adapter_type"] != "lora":
            raise ConfigError(field, "Blend LoRA adapters (uploaded, trained or generated).",
                              problem=f"it is a {record['adapter_type']} adapter")
        return self.store.verified_adapter_path(user_id, ident)

    def _fitted(self, bank: Experts):
        """The CVAE of this bank, fitted on first use (once: a changed bank refits)."""
        with self._lock:
            if self._generator is None or self._generator[0] != tuple(bank.ids):
                if len(bank.ids) < 3:
                    raise ConfigError("method", 'Use "blend": this server\'s expert bank is too small for the CVAE.',
                                      problem=f"{len(bank.ids)} experts")
                self._generator = (tuple(bank.ids), fit_generator(bank, k=self.k, tau=self.tau))
            return self._generator[1]

    def _store(self, user_id: str, lora, name: str) -> str:
        from parsona.adapters.peft_format import write_peft_lora

        if lora.rank > MAX_RANK:
            raise ConfigError("rank", f"Pass a rank ≤ {MAX_RANK} to compact the blend.",
                              problem=f"the exact blend has rank {lora.rank}")
        if self.check is not None:
            try:
                self.check(lora)
            except ConfigError as exc:                                   # the experts are at fault, not a file
                raise ConfigError("experts", "Blend experts trained for this server's base model.",
                                  problem=exc.problem) from None
        with self.store.temp_dir("generated-") as tmp:
            write_peft_lora(lora, tmp / "lora", list(lora.factors), lora.base_model)
            return self.store.put_adapter(user_id, tmp / "lora", "lora", name)


def _public(user_id: str | None, ident) -> bool:
    """Whether an explicit blend's id names a public expert (``exp_…``; every id, with no user)."""
    return user_id is None or (isinstance(ident, str) and ident.startswith("exp_"))
