"""The persona prefix (Persona-Plug): soft tokens exactly where the placeholders are, nothing elsewhere,
served per row beside every other type."""

from __future__ import annotations

import pytest
import torch

from conftest import peft_lora_dir, perturb, tiny_tokenizer
from parsona.adapters import PersonaPrefixConfig, PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.host import Host, Request
from parsona.store import Store

D = 8   # persona width in these tests


def embeddings(model, ids):
    return model.get_input_embeddings()(ids)


def test_soft_tokens_replace_the_placeholders_and_nothing_else():
    model = tiny_causal_lm()
    adapter = attach(model, PersonaPrefixConfig(persona_dim=D, n_tokens=2, hidden=4, placeholder_id=3))
    perturb(adapter)
    layer = next(iter(adapter.layers.values()))
    ids = torch.tensor([[3, 3, 10, 11, 3], [12, 13, 14, 15, 16]])            # row 0: 3 placeholders; row 1: none
    persona = torch.randn(2, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), adapter.disabled():
        base = embeddings(model, ids)
    with torch.no_grad(), adapter.inputs(persona=persona):
        out = embeddings(model, ids)
    W_down, W_up = layer.down.weight, layer.up.weight                         # (4, D), (2·32, 4)
    S = (W_up @ torch.nn.functional.gelu(W_down @ persona[0])).view(2, 32)    # row 0's two soft tokens, by hand
    torch.testing.assert_close(out[0, 0], base[0, 0] + S[0])
    torch.testing.assert_close(out[0, 1], base[0, 1] + S[1])
    torch.testing.assert_close(out[0, 4], base[0, 4] + S[1])                  # a later placeholder: the last token
    torch.testing.assert_close(out[0, 2:4], base[0, 2:4], rtol=0, atol=0)    # ordinary tokens untouched
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)               # no placeholder: untouched


def test_a_row_without_a_persona_is_exactly_the_base_model_even_with_placeholders():
    model = tiny_causal_lm()
    adapter = attach(model, PersonaPrefixConfig(persona_dim=D))
    perturb(adapter)
    ids = torch.tensor([[3, 40, 41, 42]])
    with torch.no_grad():
        with adapter.disabled():
            base = model(ids).logits
        with adapter.inputs(persona=adapter.stack_rows("persona", [None])):
            torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)


def test_the_projector_learns_with_the_base_frozen():
    model = tiny_causal_lm()
    adapter = attach(model, PersonaPrefixConfig(persona_dim=D, hidden=16))
    ids = torch.tensor([[3, 50, 51, 52, 53, 54, 55]])
    persona = torch.nn.functional.normalize(torch.randn(1, D, generator=torch.Generator().manual_seed(2)), dim=-1)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        with adapter.inputs(persona=persona):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.fixture
def world(tmp_path):
    """A float64 host with a preference LoRA, the LoRA bank and a persona prefix; three users with a LoRA each."""
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0).double()
    pref, persona = attach(model, PreferenceLoRAConfig(rank=2)), attach(model, PersonaPrefixConfig(persona_dim=D))
    perturb(pref)
    perturb(persona, std=2.0)
    store = Store(tmp_path / "store")
    users = [store.create_user()[0] for _ in range(3)]
    loras = [store.put_adapter(u, peft_lora_dir(tmp_path / f"lora{n}", seed=n), "lora", "mine") for n, u in enumerate(users)]
    yield Host(model, tiny_tokenizer(), store, [pref, persona]), users, loras
    store.close()


def test_one_batch_of_six_users_each_with_its_own_mix_equals_each_row_alone(world):
    host, users, loras = world
    g = torch.Generator().manual_seed(5)
    persona = [[float(x) for x in torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)] for _ in range(3)]
    mixes = [(0, {"preference": [0.5, 0.5]}),
             (0, {"preference": [0.9, 0.1], "persona": persona[0]}),
             (1, {"preference": [0.2, 0.8], "adapter": loras[1], "persona": persona[1]}),
             (1, {"preference": [0.2, 0.8], "adapter": loras[1]}),
             (2, {"preference": [0.6, 0.4], "adapter": loras[2], "persona": persona[2]}),
             (2, {"preference": [0.6, 0.4], "adapter": loras[2]})]
    requests = [Request(prompt="the cat sat", user_id=users[u], conditioning=c, max_new_tokens=8) for u, c in mixes]
    batch = host.generate(requests)
    alone = [host.generate([r])[0] for r in requests]
    assert [c.text for c in batch] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batch] == [c.prompt_tokens for c in alone]
    assert batch[2].text != batch[3].text and batch[4].text != batch[5].text   # each pair differs only by persona
    no_persona = host.prepare(requests[0]).input_ids
    assert host.prepare(requests[1]).input_ids == [3] + no_persona               # one placeholder before the prompt


def test_a_placeholder_outside_the_vocabulary_is_refused_at_attach():
    from parsona.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        attach(tiny_causal_lm(), PersonaPrefixConfig(persona_dim=D, placeholder_id=256))      # vocab 256
    assert err.value.field == "placeholder_id"
