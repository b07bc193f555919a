"""ONNX export that keeps every runtime input live: the base model with its attached adapters as one graph

    inputs   input_ids (batch, sequence) int64, attention_mask (batch, total_sequence) int64 (past + new),
             one input per runtime input the attached types declare in the registry (``preference``
             float32 (batch, m), ...), past_key_values.{i}.key / .value (batch, kv_heads, past_sequence, head_dim)
    outputs  logits (batch, sequence, vocab), present.{i}.key / .value (batch, kv_heads, total_sequence, head_dim)

One graph serves prefill (a past of length 0) and each decode step. Positions come from the mask
(cumsum − 1), so left-padded rows decode like unpadded ones. The exporter reads the inputs' names,
shapes and domains from the adapters (``input_names``, ``example_inputs``, the registry's
``RuntimeInput``) and never an adapter type's name. It traces with ``torch.export`` (``dynamo=True``: a
data-dependent branch fails loudly instead of being baked in) at example sizes that are all different
and ≥ 2 (size 1 would specialise the single-token path), with one named dimension for the batch and one
for the past across every cache tensor. Beside ``model.onnx`` go the tokenizer's files and
``parsona_onnx.json`` (inputs, adapters and their configs, objectives, eos and pad ids, chat template) and
``genai_config.json`` (onnxruntime-genai loads the directory; runtime inputs via ``set_model_input``),
all written into a temporary directory and renamed into place: a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.export import refuse_non_empty

FORMAT_VERSION = 1
META_NAME = "parsona_onnx.json"
GENAI_NAME = "genai_config.json"
MODEL_NAME = "model.onnx"
EXAMPLE = {"batch": 3, "sequence": 4, "past_sequence": 5}     # all different, all ≥ 2


class _Graph(nn.Module):
    """forward(input_ids, attention_mask, *runtime inputs, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module, adapters: Sequence, names: Sequence[str], n_layers: int):
        super().__init__()
        self.model, self.adapters, self.names, self.n_layers = model, list(adapters), list(names), n_layers

    def forward(self, input_ids, attention_mask, *rest):
        from transformers import DynamicCache

        values = dict(zip(self.names, rest[: len(self.names)]))
        past = rest[len(self.names):]
        cache = DynamicCache(config=self.model.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        T = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]       # (B, T)
        with contextlib.ExitStack() as stack:
            for adapter in self.adapters:
                stack.enter_context(adapter.inputs(**{n: values[n] for n in adapter.input_names}))
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def graph_inputs(adapters: Sequence) -> list[dict]:
    """Each attached runtime input as {name, shape (after the batch), dtype, domain, required, adapter_type},
    from the adapter's own example values; an input that is not a tensor (a LoRA bank's adapter id) cannot
    be a graph input, and says so."""
    out = []
    for adapter in adapters:
        examples = adapter.example_inputs(EXAMPLE["batch"], torch.Generator().manual_seed(0))
        for spec in adapter.runtime_inputs:
            value = examples.get(spec.name)
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ConfigError(spec.name, "Export a model whose per-row inputs are tensors; serve per-user "
                                  "LoRAs from the host, or merge one into the model before export.",
                                  problem=f"the {adapter.adapter_type} input {spec.name!r} is not a float tensor")
            prefix = adapter.prompt_prefix(spec.name, adapter.check_row(spec.name, value[0]))
            out.append({"name": spec.name, "shape": list(value.shape[1:]), "dtype": "float32",
                        "domain": spec.domain, "required": spec.required, "description": spec.description,
                        "adapter_type": adapter.adapter_type, "prompt_prefix": [int(t) for t in prefix],
                        "reserved_ids": sorted(int(t) for t in adapter.reserved_ids())})
    return out


def _examples(adapters, config, inputs: list[dict]) -> tuple[tuple, tuple]:
    """(example args, dynamic shapes) in the graph's input order."""
    from torch.export import Dim

    B, T, P = EXAMPLE["batch"], EXAMPLE["sequence"], EXAMPLE["past_sequence"]
    batch, sequence, past, total = Dim("batch"), Dim("sequence"), Dim("past_sequence"), Dim("total_sequence")
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (B, T), generator=g)
    values = {}
    for adapter in adapters:
        values.update(adapter.example_inputs(B, torch.Generator().manual_seed(1)))
    runtime = tuple(values[i["name"]].float() for i in inputs)
    cache = tuple(torch.randn(B, heads, P, head_dim, generator=g) for _ in range(2 * config.num_hidden_layers))
    args = (ids, torch.ones(B, P + T, dtype=torch.long), *runtime, *cache)
    # forward(input_ids, attention_mask, *rest): torch.export sees ``rest`` as one tuple
    shapes = ({0: batch, 1: sequence}, {0: batch, 1: total},
              (*({0: batch} for _ in runtime), *({0: batch, 2: past} for _ in cache)))
    return args, shapes


def export(model: nn.Module, tokenizer, out_dir: str | Path, adapters: Sequence = (), *,
           objectives: Sequence[str] | None = None, overwrite: bool = False, variants: Sequence[str] = ()) -> Path:
    """Write ``out_dir`` (model.onnx, tokenizer files, parsona_onnx.json, and ``model.<variant>.onnx`` for
    each of ``variants``: "fp16", "int8", see ``parsona.export.variants``); return it."""
    import onnx

    from parsona.export.variants import check_variants, write_variants
    from parsona.io import atomic_dir, write_json

    variants = check_variants(variants)
    out = Path(out_dir)
    refuse_non_empty(out, overwrite)
    if next(model.parameters()).dtype != torch.float32:
        raise ConfigError("model", "Load the model in float32 for export (load_base_model(..., dtype=torch.float32)): "
                          "the runtime feeds float32 inputs and cache.", problem=f"it is {next(model.parameters()).dtype}")
    config = model.config
    inputs = graph_inputs(adapters)
    names = [i["name"] for i in inputs]
    layers = config.num_hidden_layers
    cache_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    args, shapes = _examples(adapters, config, inputs)
    began = time.perf_counter()
    with atomic_dir(out) as tmp, torch.no_grad():
        torch.onnx.export(_Graph(model.eval(), adapters, names, layers).eval(), args, str(tmp / MODEL_NAME),
                          input_names=["input_ids", "attention_mask", *names, *cache_names],
                          output_names=["logits", *(n.replace("past_key_values", "present") for n in cache_names)],
                          dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
        fold_constants(tmp / MODEL_NAME)
        onnx.checker.check_model(str(tmp / MODEL_NAME))
        files = write_variants(tmp, variants)
        tokenizer.save_pretrained(tmp)
        meta = {**metadata(model, tokenizer, adapters, inputs, objectives, seconds=round(time.perf_counter() - began, 2)),
                "variants": files}
        write_json(tmp / META_NAME, meta)
        write_json(tmp / GENAI_NAME, genai_config(model, meta))
    return out


def fold_constants(path: Path) -> None:
    """Fold the graph's parameter-only arithmetic into initializers, up to ``FOLD_LIMIT`` elements a tensor.

    The exporter folds tensors of up to 8,192 elements; SmolLM2's folded LoRA factors (U times its constant
    singular values, 576 × 16 and up) stayed as Mul and Transpose nodes that onnxruntime folds at load in
    float32 but runs at every step in the fp16 variant (it has no CPU kernel to fold them with). A
    vocabulary-sized tied embedding (tens of millions) stays unfolded: folding its transpose would store it twice.
    """
    import onnx
    import onnxscript.optimizer

    model = onnxscript.optimizer.optimize(onnx.load(str(path)), input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    onnx.save(model, str(path))


FOLD_LIMIT = 2**22


def metadata(model, tokenizer, adapters, inputs: list[dict], objectives, seconds: float) -> dict:
    """What a runtime needs besides the graph: the inputs, the cache's layout, the tokens that end a reply."""
    config = model.config
    ids = config.eos_token_id if isinstance(config.eos_token_id, (list, tuple)) else [config.eos_token_id]
    eos = [int(e) for e in (*ids, tokenizer.eos_token_id) if e is not None]
    eos = list(dict.fromkeys(eos))                                   # the model's, then the tokenizer's, once each
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return {"format_version": FORMAT_VERSION, "inputs": inputs,
            "adapters": [{"adapter_type": a.adapter_type, "config": a.config.to_dict()} for a in adapters],
            "objectives": list(objectives) if objectives else None,
            "num_hidden_layers": config.num_hidden_layers, "num_key_value_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "vocab_size": config.vocab_size, "eos_token_ids": eos,
            "pad_token_id": int(pad), "chat_template": getattr(tokenizer, "chat_template", None),
            "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
            "export_seconds": seconds}


def genai_config(model, meta: dict) -> dict:
    """onnxruntime-genai's config for this graph: ``og.Model(DIR)`` loads the export, and each runtime input is
    set per generator with ``generator.set_model_input("preference", array (B, m))`` (tested: the tokens equal
    :class:`~parsona.export.runtime.OnnxGenerator`'s). No position_ids: the graph computes them from the mask."""
    config = model.config
    return {"model": {
        "bos_token_id": config.bos_token_id, "eos_token_id": meta["eos_token_ids"], "pad_token_id": meta["pad_token_id"],
        "context_length": int(getattr(config, "max_position_embeddings", 2048)), "vocab_size": meta["vocab_size"],
        "type": getattr(config, "model_type", "llama"),
        "decoder": {"filename": MODEL_NAME, "head_size": meta["head_dim"], "hidden_size": config.hidden_size,
                    "num_attention_heads": config.num_attention_heads, "num_hidden_layers": meta["num_hidden_layers"],
                    "num_key_value_heads": meta["num_key_value_heads"], "session_options": {"provider_options": []},
                    "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                               "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                    "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                "present_value_names": "present.%d.value"}}},
        "search": {"max_length": int(getattr(config, "max_position_embeddings", 2048)), "do_sample": False,
                   "num_beams": 1, "past_present_share_buffer": False}}


def merge_lora(model: nn.Module, lora_dir: str | Path) -> nn.Module:
    """A user's PEFT LoRA folded into the base weights (PEFT's ``merge_and_unload``): a per-user export.

    Chosen over onnxruntime's LoRA adapter files (``.onnx_adapter``, activated per run): a merged export
    decodes at the bare model's speed, loads in any onnxruntime build, and still keeps every attached
    adapter's runtime inputs live on top (a user's LoRA and a per-row λ); adapter files need the LoRA
    factors as graph inputs fixed at export time and a conversion step per LoRA, and swap whole adapters
    per run anyway, so a device that serves one user gains nothing from them."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(lora_dir)).merge_and_unload()


def objectives_of(adapter_dir: str | Path) -> list[str] | None:
    """The objective names a preference LoRA was trained on, from its training summary (None if unknown)."""
    summary = Path(adapter_dir) / "training_summary.json"
    if not summary.is_file():
        return None
    names = json.loads(summary.read_text()).get("config", {}).get("objectives")
    return list(names) if isinstance(names, (list, tuple)) else None
