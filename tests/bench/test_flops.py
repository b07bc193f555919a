"""bench/flops.py's written-out FLOP model of a preference-LoRA step against an independent count:
torch.utils.flop_counter.FlopCounterMode over a real step of the tiny random Llama, one pair run
the way the recipe runs it (PairLogProbs with λ, .sum().backward(), the reference pass under
no_grad and adapter.disabled()).

FlopCounterMode counts the matmuls (mm, addmm, bmm: every Linear, the LoRA factors, the LM head)
but not CPU attention (aten._scaled_dot_product_flash_attention_for_cpu and its backward have no
FLOP formula), so the model's attention term is taken out and the rest must agree exactly: both are
integer counts of the same products, so there is no tolerance.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.logprobs import PairLogProbs

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:   # as when the benches run as scripts: bench/ first
    sys.path.insert(0, str(BENCH))

from flops import Piece, ModelShape, backward_flops, forward_flops, pair_pieces, step_flops  # noqa: E402

PREFERENCE = torch.tensor([[0.3, 0.7]])


def attention(count, pieces: list[Piece]) -> int:
    """The attention share of ``count(pieces)`` (a FLOP-model function of the pieces), read from the model's
    own formula: its attention term is (FLOPs per context) × Σ contexts, and a piece's ``past`` enters
    nothing else (not the token count n, not the scored positions). One more past token per piece adds
    Σ n contexts, so the per-context FLOPs are the difference over Σ n."""
    shifted = [Piece(p.n, p.past + 1, p.scored) for p in pieces]
    extra = sum(p.contexts for p in shifted) - sum(p.contexts for p in pieces)
    assert extra == sum(p.n for p in pieces)
    per_context, rest = divmod(count(shifted) - count(pieces), extra)
    assert rest == 0
    return per_context * sum(p.contexts for p in pieces)


def matmuls(count, pieces: list[Piece]) -> int:
    """``count(pieces)`` without attention: what FlopCounterMode sees on CPU."""
    return count(pieces) - attention(count, pieces)


def setup(layers: int, **adapter):
    model = tiny_causal_lm(num_hidden_layers=layers)
    assert model.config._attn_implementation == "sdpa"      # the packed pair (4D mask), as the recipe runs it
    lora = attach(model, PreferenceLoRAConfig(**adapter))
    # as bench/train_speed.py builds it from the recipe's run
    shape = ModelShape.of(model.config, [(path, layer.U.shape[1]) for path, layer in lora.layers.items()])
    g = torch.Generator().manual_seed(0)
    prompt, a, b = (torch.randint(3, 256, (n,), generator=g).tolist() for n in (9, 6, 4))
    return model, lora, shape, prompt, [a, b]


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# All 7 Linears of every layer (the recipe's default targets), and a partial adapter whose lowest
# adapted Linear is o_proj of layer 1 of 3: nothing below it, nor its q/k/v and attention, needs a
# gradient (exercises backward_flops' "from the lowest adapted layer up" rule).
CASES = {"all": dict(layers=2, rank=4, preference_rank=1),
         "upper": dict(layers=3, rank=2, preference_rank=2,
                       target_modules=("layers.1.self_attn.o_proj", "layers.1.mlp.up_proj", "layers.2.self_attn.k_proj"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_forward_backward_matmuls_match_flop_counter(case):
    """(a) One pair's policy forward and its backward: FlopCounterMode's totals equal the model's matmul FLOPs
    (forward_flops, backward_flops and step_flops with no reference pass, less attention), each exactly."""
    torch.manual_seed(0)
    model, lora, shape, prompt, replies = setup(**CASES[case])
    pieces = pair_pieces(len(prompt), [len(r) for r in replies])
    pair = PairLogProbs(model, lora)
    out = []
    forward = counted(lambda: out.append(pair(prompt, replies, preference=PREFERENCE)))
    backward = counted(lambda: out[0].sum().backward())
    assert all(p.grad is not None for p in lora.parameters())    # the backward reached every LoRA

    assert forward == matmuls(partial(forward_flops, shape), pieces)
    assert backward == matmuls(partial(backward_flops, shape), pieces)
    assert forward + backward == matmuls(lambda p: step_flops(shape, p, []), pieces)
    if case == "all":   # the attention share taken out is the docstrings' 4·L·d_attn·C forward, 2× that backward
        C = sum(p.contexts for p in pieces)
        assert attention(partial(forward_flops, shape), pieces) == 4 * shape.n_layers * shape.d_attn * C
        assert attention(partial(backward_flops, shape), pieces) == 8 * shape.n_layers * shape.d_attn * C


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_with_reference_pass_matmuls_match_flop_counter(case):
    """(b) The step with the reference pass in it (no_grad, adapter off), then the policy's forward and
    backward: FlopCounterMode's total equals step_flops(shape, pieces, pieces) less attention, exactly;
    and the reference pass alone equals forward_flops(adapter=False)."""
    torch.manual_seed(0)
    model, lora, shape, prompt, replies = setup(**CASES[case])
    pieces = pair_pieces(len(prompt), [len(r) for r in replies])
    pair = PairLogProbs(model, lora)

    def reference():
        with torch.no_grad(), lora.disabled():
            return pair(prompt, replies)

    def step():
        reference()
        pair(prompt, replies, preference=PREFERENCE).sum().backward()

    assert counted(reference) == matmuls(lambda p: forward_flops(shape, p, adapter=False), pieces)
    assert counted(step) == matmuls(lambda p: step_flops(shape, p, p), pieces)
