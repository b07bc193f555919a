"""One decode step's per-row pieces: the next token, overflow-free at every temperature and top_p."""

from __future__ import annotations

import pytest
import torch

from parsona.decoding import pick


@pytest.fixture
def logits():
    return torch.randn(300, generator=torch.Generator().manual_seed(0)) * 20   # (V,), a wide spread


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (5e-324, 1.0), (1e-40, 1.0), (1e-7, 1.0),
                                                (1.0, 5e-324), (2.0, 1e-30), (1e-40, 5e-324)])
def test_the_limits_are_the_argmax(logits, temperature, top_p):
    assert pick(logits, temperature, top_p, torch.Generator().manual_seed(1)) == int(logits.argmax())


def test_sampling_follows_the_softmax(logits):
    # temperature 1, no nucleus: frequencies match softmax(logits) over a few likely tokens
    small = torch.tensor([2.0, 1.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(3)
    counts = torch.bincount(torch.tensor([pick(small, 1.0, 1.0, g) for _ in range(4000)]), minlength=4).float()
    torch.testing.assert_close(counts / 4000, torch.softmax(small, -1), atol=0.03, rtol=0)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(4)
    seen = {pick(probs.log(), 1.0, 0.75, g) for _ in range(500)}
    assert seen == {0, 1}    # 0.5 < 0.75 ≤ 0.5 + 0.3: tokens 2 and 3 are cut
