"""Persona-Plug's projector, on the input embeddings: soft tokens where the placeholders are.

For a row b with persona vector p_b (d,), the projector makes n soft tokens

    S_b = W_up · gelu(W_down · p_b)           (n, D)     W_down (hidden, d), W_up (n·D, hidden)

and the j-th placeholder position of row b gets E[placeholder] + S_b[j] (a later one, S_b[n-1]).
No biases: a zero persona gives S = 0, so a row without a persona is exactly the base model
(stack_rows sends zeros for it), whatever was learned. W_up starts at 0: the adapted model starts
as the base model even where the placeholders are.
"""

from __future__ import annotations

import torch
from torch import nn

from parsona.simplex import tracing


class PersonaPrefixLayer(nn.Module):
    def __init__(self, persona_dim: int, embed_dim: int, n_tokens: int, hidden: int, placeholder_id: int):
        super().__init__()
        self.n_tokens, self.embed_dim, self.placeholder_id = n_tokens, embed_dim, placeholder_id
        self.down = nn.Linear(persona_dim, hidden, bias=False)
        self.up = nn.Linear(hidden, n_tokens * embed_dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def soft_tokens(self, persona: torch.Tensor) -> torch.Tensor:
        """(B, n, D) from personas (B, d)."""
        B = persona.shape[0]
        return self.up(nn.functional.gelu(self.down(persona))).view(B, self.n_tokens, self.embed_dim)

    def forward(self, input_ids: torch.Tensor, out: torch.Tensor, persona: torch.Tensor) -> torch.Tensor:
        """out (B, T, D) plus each row's soft tokens at its placeholder positions; persona (B, d)."""
        B, T, D = out.shape
        if persona.shape[0] != B:
            raise ValueError(f"persona has {persona.shape[0]} rows but the batch has {B}")
        slot = input_ids == self.placeholder_id                                     # (B, T)
        if not tracing() and not slot.any():                # decode steps: nothing to do (a traced graph adds zeros)
            return out
        soft = self.soft_tokens(persona.to(self.down.weight.dtype)).to(out.dtype)  # (B, n, D)
        which = (slot.cumsum(1) - 1).clamp(0, self.n_tokens - 1)                    # (B, T) j-th placeholder -> S[j]
        added = torch.gather(soft, 1, which[..., None].expand(B, T, D))             # (B, T, D)
        return out + added * slot[..., None].to(out.dtype)
