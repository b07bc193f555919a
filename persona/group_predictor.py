"""Group preference predictors (GPO, arXiv 2310.11523): a group's answers to a few questions in, its
answers to new questions out, with no gradient step at prediction.

    gpo = GroupPreferencePredictor().fit(groups)       # groups[g]: group g's answered Questions
    dists = gpo.predict(context, queries)              # context: answered Questions; queries: to answer

A :class:`Question` is one multiple-choice item as K vectors, one per (question, option) pair (an
encoder's embedding of "question + option"; or the item's one vector repeated, the option's place being
a feature), with the group's shares of its options when it is answered.

The model. Every option of every question is one token,

    token = [vector (d), i/(K−1), 1/K, y, answered (, log prior, log y − log prior) (, shift)]   (F = d + 4 … d + 7)

where y is the group's share of option i in a context question and 0 in a query (so is the log ratio). A transformer encoder
with no positional encoding, in which every token attends only to the context's tokens (a key-padding
mask), maps each token to one logit; a question's logits are softmaxed over its own options. So a
prediction depends neither on the order of the context nor on the other queries, and one forward answers
any number of queries. With ``mean_shift`` (ours) a context token also carries its question's
shift = Σ_i i/(K−1) · (y_i − r_i), how far up the scale the group's mean answer sits from the reference's
(r: the prior, or uniform), so the one number an ordinal answer mostly says (a movie rated a star above
its mean) is read directly rather than from K shares of which K − 1 are 0. With ``use_prior`` (ours, not GPO's) a token also carries the population's log
share of its option (OpinionQA's "Overall"; on MovieLens, the other users' ratings of the movie) and its
logit is added to it: the model learns how a group departs from the population. The output layer starts
at zero, so an untrained predictor answers the population (uniform without a prior).

Meta-training (GPO §3.2): each step draws ``batch_size`` tasks, each one group, a random context of
n_c ∈ [min_context, max_context] of its questions and up to ``max_targets`` of its other questions as
targets; the loss, a function of (log q, p, valid option) per target question (:func:`cross_entropy` by
default, or :func:`ordinal_w1`), is averaged over the targets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from parsona.errors import ConfigError

FORMAT_VERSION = 1
CONFIG_NAME = "group_predictor.json"
WEIGHTS_NAME = "group_predictor.safetensors"
PRIOR_FLOOR = 1e-4   # a population share of 0 would be log 0: the prior is floored here before its log


@dataclass(frozen=True)
class Question:
    """``vectors`` (K, d): one per option; ``dist`` (K,): the group's shares, None for a query; ``prior``
    (K,): the population's shares (read only by a predictor with ``use_prior``)."""

    vectors: np.ndarray
    dist: np.ndarray | None = None
    prior: np.ndarray | None = None


def option_text(question: str, option: str) -> str:
    """The text whose embedding stands for one (question, option) pair."""
    return f"Question: {question}\nAnswer: {option}"


def _shares(x, field: str, k: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (k,) or not np.isfinite(x).all():
        raise ConfigError(field, f"Give {k} finite shares, one per option.", problem=f"shape {x.shape}, "
                          f"{'finite' if np.isfinite(x).all() else 'NaN or infinite values'}")
    if (x < 0).any() or abs(x.sum() - 1.0) > 1e-3:
        raise ConfigError(field, "Give shares ≥ 0 that sum to 1 (normalise the counts).",
                          problem=f"sum {x.sum():.4f}, min {x.min():.4f}")
    return (x / x.sum()).astype(np.float32)


def check_question(q: Question, field: str, answered: bool, use_prior: bool, dim: int | None = None) -> Question:
    """``q`` with float32 arrays, or a ConfigError naming ``field.vectors`` / ``.dist`` / ``.prior``."""
    if not isinstance(q, Question):
        raise ConfigError(field, "Pass a persona.group_predictor.Question.", problem=f"got {type(q).__name__}")
    v = np.asarray(q.vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ConfigError(f"{field}.vectors", "Give one vector per option, as (K, d) with K ≥ 2: a question needs "
                          "two options or more.", problem=f"shape {v.shape}")
    if not np.isfinite(v).all() or (dim is not None and v.shape[1] != dim):
        raise ConfigError(f"{field}.vectors", f"Give finite vectors of width {dim} (the encoder the predictor was "
                          "fitted with).", problem=f"width {v.shape[1]}, finite {bool(np.isfinite(v).all())}")
    k = v.shape[0]
    if answered and q.dist is None:
        raise ConfigError(f"{field}.dist", "Give the group's shares of this question's options.", problem="missing")
    dist = _shares(q.dist, f"{field}.dist", k) if answered else None
    if use_prior and q.prior is None:
        raise ConfigError(f"{field}.prior", "This predictor reads the population's shares: give them.",
                          problem="missing")
    prior = _shares(q.prior, f"{field}.prior", k) if use_prior else None
    return Question(v, dist, prior)


def cross_entropy(logq: torch.Tensor, p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """−Σ_i p_i log q_i per question: (T, K) each in, (T,) out."""
    return -(p * logq).masked_fill(~valid, 0.0).sum(-1)


def ordinal_w1(logq: torch.Tensor, p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """W1(q, p) / (K − 1) over option positions 0..K−1 (= 1 − alignment): (T, K) each in, (T,) out."""
    q = logq.exp().masked_fill(~valid, 0.0)
    k = valid.sum(-1).clamp(min=2)
    return (q.cumsum(-1) - p.cumsum(-1)).abs().sum(-1) / (k - 1)


def cross_entropy_w1(logq: torch.Tensor, p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus W1 in option steps, (T,) out. Either alone trades one metric for the other where the
    answer is one option (MovieLens): cross-entropy keeps a spread, calibrated distribution whose mean drifts
    to the middle; W1 puts the mass where the answer is likely but turns point-like."""
    return cross_entropy(logq, p, valid) + ordinal_w1(logq, p, valid) * (valid.sum(-1).clamp(min=2) - 1)


def alignment(pred: np.ndarray, human: np.ndarray) -> float:
    """OpinionQA's alignment score, 1 − W1(pred, human) / (K − 1), over ordinal positions 0..K−1."""
    pred, human = np.asarray(pred, dtype=np.float64), np.asarray(human, dtype=np.float64)
    return float(1.0 - np.abs(np.cumsum(pred) - np.cumsum(human))[:-1].sum() / (len(human) - 1))


def _width(d: int, use_prior: bool, mean_shift: bool = False) -> int:
    """F, a token's width: the vector, place, 1/K, y, answered, with a prior its log and the log ratio, and the
    question's mean shift."""
    return d + 4 + 2 * use_prior + mean_shift


def _pack(tasks: Sequence[tuple[Sequence[Question], Sequence[Question]]], use_prior: bool,
          mean_shift: bool = False) -> dict[str, torch.Tensor]:
    """Tasks of (context, queries) as padded tensors. Tokens are packed without padding options:
    x (B, N, F) and key (B, N), True for a context token; per question, slot (B, Q, K) is the token of
    each option (0 where the question has fewer), valid (B, Q, K), answered (B, Q), p (B, Q, K) the shares
    of every answered question and logprior (B, Q, K)."""
    B = len(tasks)
    Q = max(len(c) + len(t) for c, t in tasks)
    K = max(q.vectors.shape[0] for c, t in tasks for q in (*c, *t))
    N = max(sum(q.vectors.shape[0] for q in (*c, *t)) for c, t in tasks)
    d = tasks[0][0][0].vectors.shape[1]
    x, key = np.zeros((B, N, _width(d, use_prior, mean_shift)), dtype=np.float32), np.zeros((B, N), dtype=bool)
    slot, valid = np.zeros((B, Q, K), dtype=np.int64), np.zeros((B, Q, K), dtype=bool)
    p, logprior = np.zeros((B, Q, K), dtype=np.float32), np.zeros((B, Q, K), dtype=np.float32)
    answered = np.zeros((B, Q), dtype=bool)
    for b, (context, queries) in enumerate(tasks):
        n = 0
        for j, q in enumerate((*context, *queries)):
            k, ctx = q.vectors.shape[0], j < len(context)
            tok = x[b, n : n + k]
            tok[:, :d] = q.vectors
            tok[:, d] = np.arange(k) / (k - 1)                  # the option's place on the question's scale
            tok[:, d + 1] = 1.0 / k
            if ctx:
                tok[:, d + 2], tok[:, d + 3] = q.dist, 1.0
            if q.dist is not None:
                p[b, j, :k] = q.dist
            if use_prior:
                logprior[b, j, :k] = tok[:, d + 4] = np.log(np.maximum(q.prior, PRIOR_FLOOR))
                if ctx:                                              # what the model predicts for a query
                    tok[:, d + 5] = np.log(np.maximum(q.dist, PRIOR_FLOOR)) - tok[:, d + 4]
            if mean_shift and ctx:
                reference = q.prior if use_prior else np.full(k, 1.0 / k)
                tok[:, -1] = tok[:, d] @ (q.dist - reference)              # Σ_i place_i (y_i − r_i), every option
            slot[b, j, :k], valid[b, j, :k], answered[b, j], key[b, n : n + k] = np.arange(n, n + k), True, ctx, ctx
            n += k
    return {name: torch.from_numpy(a) for name, a in {"x": x, "key": key, "slot": slot, "valid": valid,
                                                      "answered": answered, "p": p, "logprior": logprior}.items()}


class _EncoderLayer(nn.TransformerEncoderLayer):
    """PyTorch's encoder layer (same parameters, same state dict) with its self-attention written out, for speed
    on CPU: keys are cut after the last context token (every token attends to the context alone, and _pack
    lays each task's context first: about half the pairs go), and so is the attention weights' dropout.
    PyTorch's fused attention with dropout takes a CPU path about 7× slower than the product and the dropout
    written out (bench: 158 vs 21 + 47 ms a layer at 16 tasks × 360 tokens), and it was most of a
    meta-training step. (Under ``no_grad`` in eval, PyTorch's fused fast path runs the layer instead: the
    same function.)"""

    def _sa_block(self, x: torch.Tensor, attn_mask, key_padding_mask: torch.Tensor, is_causal: bool = False):
        if attn_mask is not None or is_causal or key_padding_mask is None:
            raise NotImplementedError("_EncoderLayer takes a key-padding mask only")
        attn = self.self_attn
        B, N, d = x.shape
        H = attn.num_heads
        if key_padding_mask.dtype == torch.bool:                                     # True: not a key
            key_padding_mask = torch.zeros_like(key_padding_mask, dtype=x.dtype).masked_fill(key_padding_mask, -math.inf)
        n_keys = int(torch.isfinite(key_padding_mask).any(0).nonzero().max()) + 1
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # (B, N, d) each
        q = q.view(B, N, H, d // H).transpose(1, 2)                                      # (B, H, N, d/H)
        k, v = (t[:, :n_keys].reshape(B, n_keys, H, d // H).transpose(1, 2) for t in (k, v))   # (B, H, n_keys, d/H)
        w = q @ k.transpose(-1, -2) / math.sqrt(d // H) + key_padding_mask[:, None, None, :n_keys]  # (B, H, N, n_keys)
        w = w.softmax(-1)
        if self.training and attn.dropout > 0:      # a uniform draw and a compare: 19 ms here, F.dropout's 47
            w = w * torch.rand_like(w).ge_(attn.dropout).mul_(1.0 / (1.0 - attn.dropout))
        return self.dropout1(attn.out_proj((w @ v).transpose(1, 2).reshape(B, N, d)))


class _Net(nn.Module):
    def __init__(self, f_in: int, d_model: int, n_layers: int, n_heads: int, dropout: float, dim: int,
                 attention_dropout: float = 0.1):
        super().__init__()
        # the training vectors' mean, and their spread about it (one number, set by fit): sentence and LM
        # embeddings share one large common direction, which would otherwise swamp what tells two questions
        # apart; one scale for all dimensions keeps a centred vector's length about 1, like the other features
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.inp = nn.Linear(f_in, d_model)
        layer = _EncoderLayer(d_model, n_heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        layer.self_attn.dropout = attention_dropout                                 # its own knob
        self.body = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm, self.out = nn.LayerNorm(d_model), nn.Linear(d_model, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, batch: dict[str, torch.Tensor], use_prior: bool) -> torch.Tensor:
        """log q (B, Q, K): each question's predicted shares, softmaxed over its valid options."""
        B, Q, K = batch["slot"].shape
        d = self.shift.shape[0]
        x = torch.cat([(batch["x"][..., :d] - self.shift) / self.scale, batch["x"][..., d:]], dim=-1)   # (B, N, F)
        h = self.body(self.inp(x), src_key_padding_mask=~batch["key"])            # (B, N, d_model); keys: context
        logits = self.out(self.norm(h)).squeeze(-1).gather(1, batch["slot"].view(B, Q * K)).view(B, Q, K)
        if use_prior:
            logits = logits + batch["logprior"]
        return torch.log_softmax(logits.masked_fill(~batch["valid"], -1e9), dim=-1)


class GroupPreferencePredictor:
    """scikit-learn style: hyperparameters here; :meth:`fit` learns ``net_``, ``dim_`` and ``losses_``."""

    def __init__(self, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.1,
                 attention_dropout: float = 0.1,
                 steps: int = 1000, batch_size: int = 16, learning_rate: float = 1e-3, weight_decay: float = 0.01,
                 min_context: int = 5, max_context: int = 40, max_targets: int = 40, use_prior: bool = False,
                 mean_shift: bool = False, loss: Callable = cross_entropy, seed: int = 0, device: str | None = None,
                 progress: bool = True):
        self.d_model, self.n_layers, self.n_heads, self.dropout = d_model, n_layers, n_heads, dropout
        self.attention_dropout = attention_dropout
        self.steps, self.batch_size, self.learning_rate, self.weight_decay = steps, batch_size, learning_rate, weight_decay
        self.min_context, self.max_context, self.max_targets = min_context, max_context, max_targets
        self.use_prior, self.loss, self.seed, self.device, self.progress = use_prior, loss, seed, device, progress
        self.mean_shift = mean_shift

    def get_params(self) -> dict:
        """The hyperparameters that shape the model (what :meth:`save` keeps)."""
        return {k: getattr(self, k) for k in ("d_model", "n_layers", "n_heads", "dropout", "attention_dropout",
                                              "steps", "batch_size", "learning_rate", "weight_decay", "min_context",
                                              "max_context", "max_targets", "use_prior", "mean_shift", "seed")}

    def fit(self, groups: Sequence[Sequence[Question]]) -> "GroupPreferencePredictor":
        """Meta-train on ``groups`` (each a sequence of answered Questions, two or more)."""
        from tqdm.auto import tqdm

        self._check_params()
        if not groups:
            raise ConfigError("groups", "Give at least one group of answered questions.", problem="got none")
        dim = np.asarray(groups[0][0].vectors).shape[-1] if len(groups[0]) else None
        groups = [[check_question(q, f"groups[{g}][{i}]", True, self.use_prior, dim) for i, q in enumerate(grp)]
                  for g, grp in enumerate(groups)]
        if min(len(g) for g in groups) < 2:
            raise ConfigError("groups", "Give each group 2 answered questions or more (a context and a target).",
                              problem=f"group {[len(g) for g in groups].index(min(len(g) for g in groups))} has "
                                      f"{min(len(g) for g in groups)}")
        self.dim_ = dim
        self.device_ = torch.device(self.device) if self.device else _default_device()
        with torch.random.fork_rng(devices=[]):                        # a seeded init; the caller's RNG restored
            torch.manual_seed(self.seed)
            self.net_ = _Net(_width(dim, self.use_prior, self.mean_shift), self.d_model, self.n_layers,
                             self.n_heads, self.dropout, dim, self.attention_dropout).to(self.device_)
            V = _distinct_vectors(groups)
            self.net_.shift.copy_(torch.from_numpy(V.mean(0)))
            self.net_.scale.fill_(float(np.sqrt(((V - V.mean(0)) ** 2).sum(1).mean())) + 1e-6)
            rng = np.random.default_rng(self.seed)
            opt = torch.optim.AdamW(self.net_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            warmup = max(1, self.steps // 20)                          # linear warm-up, then cosine to 0
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
                1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, self.steps - warmup))))))
            self.net_.train()
            self.losses_ = []
            for _ in tqdm(range(self.steps), desc="meta-train", unit="step", disable=not self.progress):
                tasks = [self._task(groups, rng) for _ in range(self.batch_size)]
                loss = self._loss(_pack(tasks, self.use_prior, self.mean_shift))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                self.losses_.append(float(loss.detach()))
        self.net_.eval()
        return self

    def _check_params(self) -> None:
        ints = {"d_model": 1, "n_layers": 1, "n_heads": 1, "steps": 0, "batch_size": 1, "min_context": 1,
                "max_context": 1, "max_targets": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(name, f"Use a whole number ≥ {low}.", problem=f"got {value!r}")
        if self.d_model % self.n_heads or self.max_context < self.min_context:
            raise ConfigError("n_heads" if self.d_model % self.n_heads else "max_context",
                              "n_heads must divide d_model, and max_context ≥ min_context.",
                              problem=f"d_model {self.d_model}, n_heads {self.n_heads}, context "
                                      f"[{self.min_context}, {self.max_context}]")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(name, "Use a probability in [0, 1).", problem=f"got {value!r}")
        if not callable(self.loss):
            raise ConfigError("loss", "Pass a function (log q, p, valid) -> per-question loss, e.g. cross_entropy.",
                              problem=f"got {self.loss!r}")

    def _task(self, groups: list[list[Question]], rng: np.random.Generator) -> tuple[list, list]:
        group = groups[rng.integers(len(groups))]
        order = rng.permutation(len(group))
        n_c = int(rng.integers(min(self.min_context, len(group) - 1), min(self.max_context, len(group) - 1) + 1))
        return [group[i] for i in order[:n_c]], [group[i] for i in order[n_c : n_c + self.max_targets]]

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device_) for k, v in batch.items()}
        logq = self.net_(batch, self.use_prior)
        targets = batch["valid"].any(-1) & ~batch["answered"]          # (B, Q): questions to predict
        return self.loss(logq[targets], batch["p"][targets], batch["valid"][targets]).mean()

    @torch.no_grad()
    def predict(self, context: Sequence[Question], queries: Sequence[Question]) -> list[np.ndarray]:
        """Each query's predicted shares (K,) given the group's answered ``context``; no gradient step."""
        if not hasattr(self, "net_"):
            raise ConfigError("predictor", "Call fit() or load() first.", problem="not fitted")
        if len(context) == 0:
            raise ConfigError("context", "Give 1 answered question or more: the predictor adapts from them.",
                              problem="no questions")
        context = [check_question(q, f"context[{i}]", True, self.use_prior, self.dim_) for i, q in enumerate(context)]
        queries = [check_question(q, f"queries[{i}]", False, self.use_prior, self.dim_) for i, q in enumerate(queries)]
        if not queries:
            return []
        batch = _pack([(context, queries)], self.use_prior, self.mean_shift)
        batch = {k: v.to(self.device_) for k, v in batch.items()}
        q = self.net_(batch, self.use_prior)[0, len(context):].exp().double().cpu().numpy()   # (n_queries, K)
        return [row[: query.vectors.shape[0]] / row[: query.vectors.shape[0]].sum() for row, query in zip(q, queries)]

    def shares_for(self, encoder, context: Sequence[Question], question: str, options: Sequence[str],
                   question_chars: int = 300) -> np.ndarray:
        """The group's predicted shares (K,) of unordered ``options`` (candidate replies) as answers to
        ``question`` given its ``context``: each embedded by ``encoder`` (the predictor's) as :func:`option_text`
        of the question's last ``question_chars`` characters (so that a long prompt never crowds the reply out
        of the encoder's window) and the option. An option's place on a scale is an input of the model, and
        replies have none: the shares are averaged over the K cyclic orders, where each option takes every
        place once. With ``use_prior`` the population is taken as indifferent (a uniform prior). What
        ``objectives.GroupPreferenceReward`` scores candidate responses with."""
        k = len(options)
        vectors = encoder.transform([option_text(question[-question_chars:], o) for o in options])      # (K, d)
        prior = np.full(k, 1.0 / k) if self.use_prior else None
        orders = [np.roll(np.arange(k), s) for s in range(k)]
        preds = self.predict(context, [Question(vectors[o], None, prior) for o in orders])            # K × (K,)
        shares = np.zeros(k)
        for o, p in zip(orders, preds):
            shares[o] += p / k
        return shares

    def save(self, path: str | Path, extra_json: dict | None = None) -> Path:
        """Write ``path/`` atomically: the weights as safetensors, the settings as JSON (no pickle), and each
        ``extra_json`` {file name: object} beside them (a training summary lands with the weights or not at all)."""
        from safetensors.torch import save_file

        from parsona.io import atomic_dir

        if not hasattr(self, "net_"):
            raise ConfigError("predictor", "Call fit() before save().", problem="not fitted")
        with atomic_dir(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}, tmp / WEIGHTS_NAME)
            (tmp / CONFIG_NAME).write_text(json.dumps({
                "format_version": FORMAT_VERSION, "params": self.get_params(), "dim": self.dim_,
                "loss": getattr(self.loss, "__name__", str(self.loss)), "final_loss": self.losses_[-1] if self.losses_ else None,
            }, indent=2))
            for name, obj in (extra_json or {}).items():
                if Path(name).name in (CONFIG_NAME, WEIGHTS_NAME):
                    raise ConfigError("extra_json", f"Name the file anything but {CONFIG_NAME} or {WEIGHTS_NAME}.",
                                      problem=f"got {name!r}")
                (tmp / Path(name).name).write_text(json.dumps(obj, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "GroupPreferencePredictor":
        """A predictor :meth:`save` wrote, ready to :meth:`predict`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise ConfigError(str(path), "Point to a directory GroupPreferencePredictor.save() wrote.",
                              problem=f"no {CONFIG_NAME}")
        config = json.loads((path / CONFIG_NAME).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ConfigError(str(path / CONFIG_NAME), f"Re-save it with this version (format {FORMAT_VERSION}).",
                              problem=f"format {config.get('format_version')!r}")
        self = cls(**config["params"], loss=LOSSES.get(config["loss"], cross_entropy), device=device, progress=False)
        self.dim_, self.losses_ = config["dim"], []
        self.device_ = torch.device(device) if device else _default_device()
        self.net_ = _Net(_width(self.dim_, self.use_prior, self.mean_shift), self.d_model, self.n_layers,
                         self.n_heads, self.dropout, self.dim_, self.attention_dropout)
        self.net_.load_state_dict(load_file(path / WEIGHTS_NAME))
        self.net_.to(self.device_).eval()
        return self


def preference_from_answers(answers: Sequence[np.ndarray], axes: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """A preference vector λ (m,) on the simplex for a preference LoRA whose m objectives are m groups' axes.

    The mapping: objective j is "answer as group j would", so a user is read as a mixture of the m
    groups, and λ is the mixture that best explains the user's answers,

        λ = argmin_{λ ∈ Δ} Σ_q ‖Σ_j λ_j a_j(q) − u(q)‖²        (u(q): the user's shares on question q)

    ``answers[q]`` (K_q,) is the user's (or a group's) shares on question q; ``axes[q][j]`` (K_q,) is group
    j's on it (known, or predicted by a GroupPreferencePredictor from that group's context). Solved as
    non-negative least squares with the sum-to-one row weighted in (scipy's NNLS), then normalised."""
    from scipy.optimize import nnls

    if len(answers) == 0 or len(answers) != len(axes):
        raise ConfigError("answers", "Give one answered question or more, and the groups' shares on each (axes).",
                          problem=f"{len(answers)} answers, {len(axes)} axes")
    m = len(axes[0])
    if m < 2 or any(len(a) != m for a in axes):
        raise ConfigError("axes", "Give every question the shares of the same m ≥ 2 groups.",
                          problem=f"group counts {sorted({len(a) for a in axes})}")
    A, b = [], []
    for q, (u, groups) in enumerate(zip(answers, axes)):
        u = _shares(u, f"answers[{q}]", len(np.asarray(u)))
        A.append(np.stack([_shares(g, f"axes[{q}][{j}]", len(u)) for j, g in enumerate(groups)], axis=1))  # (K, m)
        b.append(u)
    A, b = np.vstack(A).astype(np.float64), np.concatenate(b).astype(np.float64)
    weight = 10.0 * np.sqrt(len(b))                                       # Σ λ = 1, nearly exact
    lam, _ = nnls(np.vstack([A, weight * np.ones((1, m))]), np.concatenate([b, [weight]]))
    return lam / lam.sum() if lam.sum() > 0 else np.full(m, 1.0 / m)


LOSSES = {f.__name__: f for f in (cross_entropy, ordinal_w1, cross_entropy_w1)}


def _distinct_vectors(groups: list[list[Question]], limit: int = 50_000) -> np.ndarray:
    """Up to ``limit`` option vectors, each array once (groups often share one question's vectors, and a
    repeated row, a broadcast view, counts once)."""
    seen, rows, n = set(), [], 0
    for q in (q for g in groups for q in g):
        if id(q.vectors) in seen or n >= limit:
            continue
        seen.add(id(q.vectors))
        v = q.vectors[:1] if q.vectors.strides[0] == 0 else q.vectors
        rows.append(v)
        n += len(v)
    return np.concatenate(rows)


def _default_device() -> torch.device:
    from parsona.devices import default_device

    return default_device()
