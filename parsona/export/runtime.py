"""Generation from a Parsona ONNX export without torch: onnxruntime, numpy and the tokenizer only.

    gen = OnnxGenerator("exported/")
    texts = gen.generate(["Tell me about cats."], preference=[[0.3, 0.7]], max_new_tokens=40)

Every row of a batch has its own runtime inputs (``preference`` (B, m), ...; the names and widths come
from the export's ``parsona_onnx.json``), is left-padded, and decodes with the KV cache: a prefill over
the prompts with an empty past, then one token per step. Greedy at temperature 0; otherwise sampling
(top-p) with a numpy generator seeded by ``seed``. A row stops at an end-of-sequence id. Inputs are
checked before anything runs: the width the export declares, finite values, and each input's declared
domain (``simplex``: weights ≥ 0 summing to 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from parsona.errors import ConfigError

SIMPLEX_ATOL = 1e-5     # parsona.simplex's tolerance (that module imports torch; this one may not)


class OnnxGenerator:
    """A loaded export: ``session_`` (onnxruntime), ``meta_`` (its parsona_onnx.json), ``tokenizer_``.
    ``variant`` picks a smaller graph the export holds ("fp16", "int8"; None: the float32 one)."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 variant: str | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        if not (path / "parsona_onnx.json").is_file():
            raise ConfigError("onnx", "Point to a directory `parsona export onnx` wrote.",
                              problem=f"{path} has no parsona_onnx.json")
        self.meta_ = json.loads((path / "parsona_onnx.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        variants = self.meta_.get("variants") or {}
        if variant is not None and variant not in variants:
            raise ConfigError("variant", f"Choose one this export has: {sorted(variants) or 'none'} "
                              "(parsona export onnx --variants fp16,int8 writes them).", problem=f"got {variant!r}")
        graph = variants[variant] if variant is not None else "model.onnx"
        self.session_ = ort.InferenceSession(str(path / graph), options,
                                             providers=list(providers or ["CPUExecutionProvider"]))
        self.tokenizer_ = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.inputs_ = {i["name"]: i for i in self.meta_["inputs"]}

    def check_inputs(self, batch: int, values: dict) -> dict[str, np.ndarray]:
        """Each declared runtime input as float32 (B, ...), or a ConfigError naming it and its expected shape.
        An input that is not required and not given is zeros: no row is conditioned by it (as in the host)."""
        unknown = sorted(set(values) - set(self.inputs_))
        if unknown:
            raise ConfigError(unknown[0], f"This export takes {sorted(self.inputs_) or 'no runtime inputs'}.",
                              problem="not an input of this export")
        out = {}
        for name, spec in self.inputs_.items():
            shape = (batch, *spec["shape"])
            if values.get(name) is None and not spec.get("required"):
                out[name] = np.zeros(shape, dtype=np.float32)
                continue
            if values.get(name) is None:
                raise ConfigError(name, f"Give {name} as {shape}: one row per prompt.", problem="missing")
            try:
                x = np.asarray(values[name], dtype=np.float32)
            except (TypeError, ValueError):
                raise ConfigError(name, f"Give numbers, shape {shape}.", problem="not numeric") from None
            if x.ndim == len(shape) - 1:
                x = np.broadcast_to(x, shape)                       # one row for every prompt
            if x.shape != shape:
                raise ConfigError(name, f"Give {name} as {shape}: {spec['shape'][-1] if spec['shape'] else 1} "
                                  "values per row, one row per prompt.", problem=f"got shape {x.shape}")
            if not np.isfinite(x).all():
                raise ConfigError(name, "Replace NaN/inf with finite values.", problem="non-finite values")
            if spec.get("domain") in ("simplex", "simplex_or_zero"):
                sums = x.astype(np.float64).sum(-1)
                off = np.abs(sums - 1) > SIMPLEX_ATOL
                if spec["domain"] == "simplex_or_zero":
                    off &= sums != 0
                if (x < 0).any() or off.any():
                    raise ConfigError(name, "Make every row's weights ≥ 0 and sum to 1" +
                                      (" (or all 0: not conditioned)." if spec["domain"] == "simplex_or_zero" else "."),
                                      problem=f"row sums {np.round(sums, 6).tolist()}, min {x.min():.4g}")
            out[name] = np.ascontiguousarray(x)
        return out

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The cache of a prefill: every ``past_key_values.{i}.key/value`` with a past of length 0."""
        e = np.zeros((batch, self.meta_["num_key_value_heads"], 0, self.meta_["head_dim"]), dtype=np.float32)
        return {f"past_key_values.{i}.{kv}": e for i in range(self.meta_["num_hidden_layers"]) for kv in ("key", "value")}

    def encode(self, prompts: Sequence[str], add_special_tokens: bool = True,
               given: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded (B, T) ids and mask of the prompts (the tokenizer's own special tokens included), each
        after the prompt prefix of every runtime input in ``given`` (a soft-token type's placeholders, as the
        host puts them); a prompt that carries such an input's reserved ids is refused."""
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ConfigError("prompts", "Pass a list of non-empty strings.", problem=f"got {prompts!r:.60}")
        prefix = [t for name in given for t in self.inputs_[name].get("prompt_prefix", [])]
        reserved = {t for name in given for t in self.inputs_[name].get("reserved_ids", [])}
        rows = [e.ids for e in self.tokenizer_.encode_batch(list(prompts), add_special_tokens=add_special_tokens)]
        for i, r in enumerate(rows):
            if reserved & set(r):
                raise ConfigError(f"prompts[{i}]", f"Leave out token id {min(reserved & set(r))}: it marks where an "
                                  "adapter's soft tokens go.", problem="the prompt carries a reserved token")
        rows = [prefix + r for r in rows]
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), self.meta_["pad_token_id"], dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
        return ids, mask

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """One conversation as the host renders it: the export's chat template (with jinja2, as transformers
        renders it), ending where the assistant's reply starts; without a template, a "role: content" line
        per message and then "assistant:"."""
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ConfigError("messages", "Pass a non-empty list of {'role', 'content'} with string content.")
        template = self.meta_.get("chat_template")
        if not template:
            return "".join(f"{m.get('role', 'user')}: {m['content']}\n" for m in messages) + "assistant:"
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ConfigError("messages", "pip install jinja2 to render chat templates.", problem="no jinja2") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: __import__("datetime").datetime.now().strftime(fmt))
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=True,
                                                bos_token=self.meta_.get("bos_token") or "",
                                                eos_token=self.meta_.get("eos_token") or "")

    def chat(self, conversations: Sequence[Sequence[dict]], **kwargs) -> list[str]:
        """Each conversation's reply; a rendered template carries its special tokens, so none are added."""
        prompts = [self.chat_prompt(c) for c in conversations]
        return self.generate(prompts, add_special_tokens=not self.meta_.get("chat_template"), **kwargs)

    def generate_ids(self, prompts: Sequence[str], max_new_tokens: int = 32, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int | None = None, add_special_tokens: bool = True,
                     **runtime) -> list[list[int]]:
        """Each prompt's new token ids (up to and without its end-of-sequence id)."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1 or not 0 <= temperature <= 2 or not 0 < top_p <= 1:
            raise ConfigError("max_new_tokens" if not isinstance(max_new_tokens, int) or max_new_tokens < 1 else
                              "temperature" if not 0 <= temperature <= 2 else "top_p",
                              "Use max_new_tokens ≥ 1, temperature in [0, 2], top_p in (0, 1].",
                              problem=f"got {max_new_tokens!r}, {temperature!r}, {top_p!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ConfigError("seed", "Use a whole number ≥ 0, or none.", problem=f"got {seed!r}")
        given = [n for n in self.inputs_ if runtime.get(n) is not None]
        ids, mask = self.encode(prompts, add_special_tokens, given)
        values = self.check_inputs(len(ids), runtime)
        B, past = len(ids), self.empty_past(len(ids))
        rng, eos = np.random.default_rng(seed), set(self.meta_["eos_token_ids"])
        out, done, step_ids = [[] for _ in range(B)], np.zeros(B, dtype=bool), ids
        for _ in range(max_new_tokens):
            logits, *present = self.session_.run(None, {"input_ids": step_ids, "attention_mask": mask, **values, **past})
            nxt = self._pick(logits[:, -1].astype(np.float64), temperature, top_p, rng)   # (B,)
            for b in np.flatnonzero(~done):
                if int(nxt[b]) in eos:
                    done[b] = True
                else:
                    out[b].append(int(nxt[b]))
            if done.all():
                break
            past = dict(zip(past, present))
            step_ids = np.where(done, self.meta_["pad_token_id"], nxt)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        return out

    def generate(self, prompts: Sequence[str], **kwargs) -> list[str]:
        """Each prompt's reply text; ``kwargs`` as :meth:`generate_ids` takes them."""
        return [self.tokenizer_.decode(r, skip_special_tokens=True) for r in self.generate_ids(prompts, **kwargs)]

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
        if temperature == 0:
            return logits.argmax(-1)
        z = logits / temperature
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        picks = []
        for row in p:                                                   # nucleus: the smallest set with mass ≥ top_p
            order = np.argsort(-row)
            keep = order[: int(np.searchsorted(np.cumsum(row[order]), top_p) + 1)]
            picks.append(rng.choice(keep, p=row[keep] / row[keep].sum()))
        return np.array(picks)


def _raise(message: str):
    """What a chat template calls to refuse a conversation (as transformers provides it)."""
    raise ConfigError("messages", "Send messages this model's chat template accepts.", problem=message)
