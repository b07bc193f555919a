"""Model FLOPs of a preference step, written out, and this machine's fp32 matmul peak.

``bench/train_speed.py`` divides the one by the other: model FLOP utilisation. The counts are the
useful FLOPs (what the algorithm needs, no padding, no recompute), from the model's config, the
adapter's shapes and each step's token counts: 2 per weight per token forward; the backward's
activation gradients through the frozen weights (2 per weight per token, no weight gradients:
the base is frozen) from the lowest adapted layer up; the LoRA's weight gradients; attention's
scores and values over each token's causal context; the LM head at reply positions only.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from parsona.adapters.base import LLAMA_PROJECTIONS as PROJECTIONS  # the 7 Linears of a Llama decoder layer

# A Llama decoder layer in the order its inputs become trainable-dependent: a stage's input needs a
# gradient once any stage before it (in this layer or a lower one) holds an adapted Linear.
LAYER_STAGES = (("q_proj", "k_proj", "v_proj"), ("attention",), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
PEAK_N, PEAK_REPEATS = 2048, 3   # a peak sample: best of 3 timed torch.mm of 2048×2048 @ 2048×2048 (2·n³ FLOPs each)


@dataclass(frozen=True)
class Piece:
    """Tokens that go through the model together: ``n`` new tokens, causal among themselves, after
    ``past`` tokens they all attend to (a prompt's KV cache), ``scored`` of them through the LM head."""

    n: int
    past: int = 0
    scored: int = 0

    @property
    def contexts(self) -> int:
        """Σ over the n tokens of the keys each one attends to: past + 1, past + 2, ..., past + n."""
        return self.n * self.past + self.n * (self.n + 1) // 2


def pair_pieces(prompt: int, replies: list[int]) -> list[Piece]:
    """What PairLogProbs runs for one pair: the prompt once (its last position scored once per reply: it
    predicts each reply's first token), then each reply after the prompt's cache, scoring its own
    tokens but the last (which predicts nothing); so every reply token is scored exactly once."""
    return [Piece(prompt, 0, len(replies)), *(Piece(r, prompt, r - 1) for r in replies)]


@dataclass(frozen=True)
class ModelShape:
    """What a step's FLOPs depend on: the base model's config and the adapted Linears."""

    d: int                                   # hidden_size
    d_ff: int                                # intermediate_size
    n_layers: int
    n_heads: int                             # query heads
    n_kv_heads: int
    head_dim: int
    vocab: int
    lora: tuple[tuple[int, str, int], ...]   # (layer index, projection, rank) of each adapted Linear

    @classmethod
    def of(cls, config, adapted: list[tuple[str, int]]) -> "ModelShape":
        """From a transformers config and (module path, rank) of each adapted Linear
        ("...layers.3.self_attn.q_proj")."""
        import re

        heads = config.num_attention_heads
        lora = []
        for path, rank in adapted:
            found = re.search(r"layers\.(\d+)\..*?(\w+_proj)$", path)
            if found is None or found.group(2) not in PROJECTIONS:
                raise SystemExit(f"bench bug: no FLOP model for an adapter on {path}")
            lora.append((int(found.group(1)), found.group(2), int(rank)))
        return cls(d=config.hidden_size, d_ff=config.intermediate_size, n_layers=config.num_hidden_layers,
                   n_heads=heads, n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, lora=tuple(sorted(lora)))

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.head_dim

    def linear(self, projection: str) -> tuple[int, int]:
        """(d_in, d_out) of one of a decoder layer's Linears (no biases in Llama)."""
        kv = self.n_kv_heads * self.head_dim
        return {"q_proj": (self.d, self.d_attn), "k_proj": (self.d, kv), "v_proj": (self.d, kv),
                "o_proj": (self.d_attn, self.d), "gate_proj": (self.d, self.d_ff), "up_proj": (self.d, self.d_ff),
                "down_proj": (self.d_ff, self.d)}[projection]

    def describe(self) -> str:
        layers = sorted({layer for layer, _, _ in self.lora})
        ranks = sorted({r for _, _, r in self.lora})
        span = f"layers {layers[0]}..{layers[-1]}" if layers else "no layers"
        return (f"d={self.d}, d_ff={self.d_ff}, {self.n_layers} layers, {self.n_heads} heads / {self.n_kv_heads} KV "
                f"heads × {self.head_dim}, vocab {self.vocab}; LoRA rank {'/'.join(map(str, ranks))} on "
                f"{len(self.lora)} Linears ({span}); per token forward "
                f"{2 * self.n_layers * sum(i * o for i, o in map(self.linear, PROJECTIONS)) / 1e6:.4g} MFLOP "
                f"through the base's Linears, + 2·d·V = {2 * self.d * self.vocab / 1e6:.4g} MFLOP per scored position")


def forward_flops(shape: ModelShape, pieces: list[Piece], adapter: bool = True, head: bool = True) -> float:
    """One forward of ``pieces``: per token, 2 FLOPs (a multiply and an add) per weight of every Linear it
    passes (the base's 7 per layer; the LoRA's V then U, 2·r·(d_in + d_out) per adapted Linear, when
    ``adapter``); attention 2·2·n_layers·context·d_attn (QKᵀ and PV, per query head, over the keys it
    attends to); the LM head 2·d·V at scored positions only (when ``head``). Norms, activations,
    softmax and the embedding lookup are a few FLOPs per element, left out as usual."""
    T, C, S = (sum(p.n for p in pieces), sum(p.contexts for p in pieces), sum(p.scored for p in pieces))
    base = 2 * shape.n_layers * sum(i * o for i, o in map(shape.linear, PROJECTIONS)) * T
    attention = 2 * 2 * shape.n_layers * shape.d_attn * C
    lora = sum(2 * r * sum(shape.linear(proj)) for _, proj, r in shape.lora) * T if adapter else 0
    return base + attention + lora + (2 * shape.d * shape.vocab * S if head else 0)


def backward_flops(shape: ModelShape, pieces: list[Piece]) -> float:
    """The policy's backward over ``pieces``, with the base frozen and only the LoRA trained.

    A Linear y = W x costs 2 FLOPs per weight per token forward; its backward is dx = dy·W (the same
    again) and dW = dyᵀ·x (the same again): the usual "backward = 2 × forward". A frozen W needs no dW,
    so its backward is 1 × its forward, and only where dx is needed: from the lowest adapted layer up
    (below it nothing depends on a trainable weight; in that layer the projections that read the
    block's input, q/k/v, need no dx either). Each LoRA (z = V x, then U z) gets dU and dV and the
    activation gradients dz and dx (dx only where its input needs one): 2 × its forward. Attention's
    backward (dQ, dK from the scores' gradient; dP, dV from the output's) is 2 × its forward, where
    its inputs need gradients. The LM head is tied to the frozen embedding: dh = g·W at the scored
    positions (1 × its forward), no dW. The optimizer's update (a few FLOPs per LoRA weight, not per
    token) is left out."""
    T, C, S = (sum(p.n for p in pieces), sum(p.contexts for p in pieces), sum(p.scored for p in pieces))
    if not shape.lora:
        return 0.0
    ranks = {(layer, proj): r for layer, proj, r in shape.lora}
    lowest = min(ranks)[0]
    total = 2 * shape.d * shape.vocab * S                               # dh through the frozen LM head
    for layer in range(lowest, shape.n_layers):
        needs_dx = layer > lowest                                       # does this stage's input depend on a LoRA?
        for stage in LAYER_STAGES:
            for name in stage:
                if name == "attention":
                    total += 2 * (2 * 2 * shape.d_attn * C) if needs_dx else 0
                    continue
                d_in, d_out = shape.linear(name)
                total += 2 * d_in * d_out * T if needs_dx else 0        # dx = dy·W0; W0 frozen: no dW0
                r = ranks.get((layer, name))
                if r:                                                   # dU, dz (from dy); dV, dx (from dz)
                    total += (2 * r * d_out + 2 * r * d_out + 2 * d_in * r + (2 * d_in * r if needs_dx else 0)) * T
            needs_dx = needs_dx or any((layer, name) in ranks for name in stage)
    return total


def step_flops(shape: ModelShape, policy: list[Piece], reference: list[Piece]) -> float:
    """Model FLOPs of one training step: the reference forward of ``reference`` (the pieces whose reference
    log-probs the step computes: the adapter off, no grad; none when precomputed), the policy forward
    of ``policy`` and its backward.

    Per token of a frozen weight W0 of a layer the gradient reaches: 2 (policy forward) + 2 (its dx)
    + 2 (reference forward, if it runs) FLOPs per weight; per LoRA weight: 2 + 4 = 6 (the issue's
    "6 × trainable-path FLOPs": forward, dW and dx); attention: 1 + 2 (+ 1) × its forward; the LM
    head at reply positions: 1 + 1 (+ 1) × its forward. So with the reference precomputed, a base
    whose every layer is adapted costs ≈ 4 FLOPs per base weight per token, not the 6 of full
    fine-tuning, and ≈ 6 with the reference pass in the step."""
    return forward_flops(shape, reference, adapter=False) + forward_flops(shape, policy) + backward_flops(shape, policy)


def trl_computed_flops(shape: ModelShape, rows: int, T: int, reference: bool, checkpointing: bool) -> float:
    """What a TRL DPO step computes on CPU, rather than what it needs: every one of ``rows`` rows padded to
    the longest, T; the LM head at all T - 1 positions (TRL's fused head scores only the labelled ones on
    CUDA/XPU) and again in its backward (it recomputes each logits tile instead of keeping it); the
    reference forward over the padded rows when it runs in the step; and with gradient checkpointing the
    decoder's forward once more in the backward."""
    padded = [Piece(T, 0, T - 1)] * rows
    flops = step_flops(shape, padded, padded if reference else [])
    flops += 2 * shape.d * shape.vocab * rows * (T - 1)                 # the head's recompute in the backward
    if checkpointing:
        flops += forward_flops(shape, padded, adapter=True, head=False)
    return flops


class MatmulPeak:
    """This process's fp32 matmul peak: ``torch.mm`` of two PEAK_N × PEAK_N matrices (2·n³ FLOPs), at its
    torch thread count. :meth:`sample` times PEAK_REPEATS of them; a contender samples before its first
    step and after every step (outside the steps' times), so the load the steps saw is sampled too, and
    the peak is the best sample: the share of it a step achieves is, if anything, understated."""

    def __init__(self) -> None:
        import torch

        self.a, self.b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
        self.out = torch.empty(PEAK_N, PEAK_N)
        torch.mm(self.a, self.b, out=self.out)          # untimed: first-call allocations
        self.samples: list[float] = []

    def sample(self) -> float:
        import torch

        best = float("inf")
        for _ in range(PEAK_REPEATS):
            started = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            best = min(best, time.perf_counter() - started)
        self.samples.append(2 * PEAK_N**3 / best)
        return self.samples[-1]

    def result(self) -> dict:
        import torch

        print(f"fp32 torch.mm {PEAK_N}³: best {max(self.samples) / 1e9:.1f}, worst {min(self.samples) / 1e9:.1f} GFLOP/s "
              f"over {len(self.samples)} samples ({torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
        return {"peak_flops": max(self.samples), "peak_samples": self.samples}
