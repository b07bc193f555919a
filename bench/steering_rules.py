"""Steering rules (issue 20): do a user's mined rules make the model write like that user? Real PAN-2011
Enron authors (≥ ``min_train_emails`` train emails; 18 at 30), SmolLM2 by default.

The judge no rule learner sees: an authorship classifier (scikit-learn: TF-IDF character 2-4-grams within
word bounds, logistic regression) trained on every author's train emails; its accuracy on the real test
emails is printed first, so its scores can be read. For each author, ``intents_per_author`` held-out
intents (the extractive fallback: the first sentence of a test email, at most ``intent_words`` words)
are written up greedily under

  zero_shot   "Write an email. What it says: <intent>"
  few_shot    the same after ``few_shot`` of the author's train emails (each cut to ``example_words`` words)
  mined       the same with the author's rules as the server puts them (a system message;
              ``persona.SteeringRules``, mined from the train emails against the other authors')
  agent       the same with the rules the author's preference agent writes for this intent
              (``recipes/learn_steering_rules.py``: SmolLM2 as the large model critiques its own drafts of
              ``agent_texts`` train emails; SmolLM2 + a LoRA learns intent -> rules). Its training intents
              are the extractive ones, like the held-out intents (``--agent-summarise`` asks the model)

and the judge scores each reply: its probability of the true author and top-1 attribution, with the
prompt tokens each condition adds to the zero-shot prompt. Per-author means, and paired differences with
95 % t intervals over authors. Goal (the paper's direction): mined and agent beat zero_shot, and one of
them beats few_shot at fewer prompt tokens. Caveat: the character n-gram judge also rewards a quoted
phrase that is a signature (a name in a sign-off). The agents are kept under
``output_dir/agents/<settings hash>/<author>`` and reused by a rerun with the same settings.

Then the author × rules matrix over the first ``matrix_authors`` authors: author a's intents under author
b's rules, the judge's mean probability of a; the diagonal should win each row.

    .venv/bin/python bench/steering_rules.py                                   # SmolLM2: about an hour on 2 cores
    .venv/bin/python bench/steering_rules.py --model DIR --authors 4 --intents-per-author 2 --max-new-tokens 4
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from parsona.persona.agent import ASK, intent_of

CONDITIONS = ("zero_shot", "few_shot", "mined", "agent")


@dataclass
class Config:
    model: str | None = None
    """Base model that writes the emails: HF id or local dir (default: SmolLM2-135M-Instruct)."""
    output_dir: str = "runs/steering_rules"
    """Where results-rules.json goes."""
    min_train_emails: int = 30
    """An author takes part with at least this many train emails."""
    authors: int = 0
    """Only the this many authors with the most train emails (0: all that take part)."""
    intents_per_author: int = 5
    """Held-out intents per author (the first test emails')."""
    intent_words: int = 25
    """Words of a test email's first sentence kept as its intent."""
    few_shot: int = 3
    """Train emails shown in the few-shot condition."""
    example_words: int = 60
    """Words of each few-shot email kept."""
    population: int = 600
    """Other authors' train emails the miner contrasts an author with."""
    max_rule_tokens: int = 150
    """The rules' token budget (counted with the model's tokenizer)."""
    max_new_tokens: int = 64
    """Tokens of each generated email."""
    batch_size: int = 16
    """Prompts generated at once."""
    matrix_authors: int = 5
    """Authors of the author × rules matrix."""
    seed: int = 0
    """Seed of the population sample and of the agents' LoRAs."""
    agent_texts: int = 16
    """Train emails each author's agent learns from (three large-model calls each)."""
    agent_summarise: bool = False
    """Let the large model summarise the agent's training intents (default: extractive, like the held-out ones)."""
    agent_steps: int = 40
    """Optimizer steps of each agent's small-model LoRA."""
    agent_learning_rate: float = 1e-3
    """Learning rate of each agent's small-model LoRA."""
    agent_rank: int = 8
    """Rank of each agent's small-model LoRA."""
    agent_max_new_tokens: int = 96
    """Tokens of each large-model reply and of each agent's rules."""


def train_agents(model, tokenizer, authors: list[str], train: dict, cfg: Config) -> dict[str, Path | None]:
    """One preference agent per author (the recipe), reused from an earlier run with the same settings."""
    import hashlib
    import json

    from parsona.recipes import learn_steering_rules as recipe

    settings = recipe.Config(model=cfg.model, max_texts=cfg.agent_texts, max_new_tokens=cfg.agent_max_new_tokens,
                             max_rule_tokens=cfg.max_rule_tokens, rank=cfg.agent_rank, max_steps=cfg.agent_steps,
                             learning_rate=cfg.agent_learning_rate, seed=cfg.seed)
    key = hashlib.sha256(json.dumps([asdict(settings), cfg.agent_summarise, cfg.intent_words, "agent.json v2"]).encode()).hexdigest()[:12]
    dirs = {}
    for n, a in enumerate(authors):
        dirs[a] = Path(cfg.output_dir) / "agents" / key / a
        if not (dirs[a] / "agent.json").is_file():
            print(f"agent {n + 1}/{len(authors)}: {a}")
            texts = train[a][: cfg.agent_texts]
            intents = None if cfg.agent_summarise else [intent_of(t, cfg.intent_words) for t in texts]
            try:
                recipe.main(replace(settings, output_dir=str(dirs[a])), model=model, tokenizer=tokenizer, texts=texts,
                            intents=intents)
            except recipe.NoRules as exc:  # the large model wrote no usable rule: this author's agent adds none
                print(f"  no agent for {a}: {exc}")
                dirs[a] = None
    return dirs


def agent_rules(model, tokenizer, dirs: dict[str, Path | None], intents: dict[str, list[str]],
                train: dict) -> tuple[dict[str, list[list[str]]], dict[str, int]]:
    """Each author's agent's rules for each of their held-out intents (all agents' LoRAs in one host; an
    author without an agent gets none), and per author how many intents got the small model's own rules
    (the rest get the agent's recurring rules)."""
    from parsona.host import Host
    from parsona.recipes import learn_steering_rules as recipe

    host = Host(model, tokenizer, loras={a: d / "small_lora" for a, d in dirs.items() if d is not None})
    rules, own = {}, {}
    try:
        for a, d in dirs.items():
            agent = recipe.load(d, host, train[a], name=a) if d is not None else None
            written = agent.rules_for(intents[a], fallback=False) if agent else [[] for _ in intents[a]]
            own[a] = sum(bool(r) for r in written)
            rules[a] = [r or (list(agent.rules_) if agent else []) for r in written]
        return rules, own
    finally:
        if host.bank is not None:
            host.bank.detach()


def few_shot_prompt(examples: list[str], intent: str, words: int) -> str:
    shown = "\n\n".join(" ".join(e.split()[:words]) for e in examples)
    return f"Emails this user wrote:\n\n{shown}\n\nIn the same style: {ASK.format(intent=intent)}"


def chat(text: str, rules: list[str] | None = None) -> list[dict]:
    """The chat a condition sends: the ask as the user's message, rules (if any) as the server puts them."""
    from parsona.persona.rules import rules_messages

    messages = [{"role": "user", "content": text}]
    return rules_messages(rules, messages) if rules else messages


def main(cfg: Config) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from parsona.base_model import load_base_model
    from parsona.bootstrap import t_interval
    from parsona.data.enron import users_split
    from parsona.host import Host
    from parsona.io import write_json
    from parsona.host import Request
    from parsona.persona import SteeringRules
    from parsona.writers import HostWriter

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    began, out = time.perf_counter(), Path(cfg.output_dir)
    authors, train, test = users_split(cfg.min_train_emails, cfg.authors)
    judge = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
                          LogisticRegression(C=10.0, max_iter=2000))
    judge.fit([t for a in authors for t in train[a]], [a for a in authors for _ in train[a]])
    real = [(t, a) for a in authors for t in test[a]]
    judge_accuracy = float(np.mean(judge.predict([t for t, _ in real]) == np.array([a for _, a in real])))
    model, tokenizer = load_base_model(cfg.model)
    host = Host(model, tokenizer)
    rng = np.random.default_rng(cfg.seed)
    rules = {}
    for a in authors:
        others = [t for b in authors if b != a for t in train[b]]
        population = [others[i] for i in rng.permutation(len(others))[: cfg.population]]
        rules[a] = SteeringRules(population=population, max_tokens=cfg.max_rule_tokens, tokenizer=tokenizer).fit(train[a]).rules_
    intents = {a: [intent_of(t, cfg.intent_words) for t in test[a][: cfg.intents_per_author]] for a in authors}
    agents = train_agents(model, tokenizer, authors, train, cfg)
    by_agent, small_wrote = agent_rules(model, tokenizer, agents, intents, train)
    prompts = {(a, c, i): p for a in authors for i, intent in enumerate(intents[a]) for c, p in (
        ("zero_shot", chat(ASK.format(intent=intent))),
        ("few_shot", chat(few_shot_prompt(train[a][: cfg.few_shot], intent, cfg.example_words))),
        ("mined", chat(ASK.format(intent=intent), rules[a])),
        ("agent", chat(ASK.format(intent=intent), by_agent[a][i])))}
    matrix_authors = authors[: cfg.matrix_authors]
    prompts |= {(a, f"rules_of:{b}", i): chat(ASK.format(intent=intent), rules[b])
                for a in matrix_authors for b in matrix_authors if b != a for i, intent in enumerate(intents[a])}
    keys = list(prompts)
    writer = HostWriter(host, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress="generating")
    texts = dict(zip(keys, writer([prompts[k] for k in keys])))
    classes = list(judge.classes_)
    proba = dict(zip(keys, judge.predict_proba([texts[k] for k in keys])))
    p_true = {k: float(proba[k][classes.index(k[0])]) for k in keys}
    top1 = {k: float(classes[int(np.argmax(proba[k]))] == k[0]) for k in keys}
    tokens = {k: len(host.prepare(Request(messages=prompts[k])).input_ids) for k in keys}
    added = {k: tokens[k] - tokens[(k[0], "zero_shot", k[2])] for k in keys}

    def per_author(values: dict, condition: str) -> np.ndarray:
        return np.array([np.mean([values[(a, condition, i)] for i in range(len(intents[a]))]) for a in authors])

    summary = {c: {"p_true": t_interval(per_author(p_true, c)), "top1": t_interval(per_author(top1, c)),
                   "tokens_added": t_interval(per_author(added, c))} for c in CONDITIONS}
    diffs = {f"{x}_minus_{y}": t_interval(per_author(p_true, x) - per_author(p_true, y))
             for x, y in (("mined", "zero_shot"), ("agent", "zero_shot"), ("few_shot", "zero_shot"),
                          ("mined", "few_shot"), ("agent", "few_shot"))}
    matrix = [[float(np.mean([p_true[(a, "mined" if b == a else f"rules_of:{b}", i)] for i in range(len(intents[a]))]))
               for b in matrix_authors] for a in matrix_authors]
    results = {"config": asdict(cfg), "authors": authors, "judge_accuracy_on_real_test_emails": judge_accuracy,
               "chance": 1 / len(authors), "rules": rules, "agent_rules": by_agent,
               "authors_without_agent": [a for a, d in agents.items() if d is None],
               "intents_ruled_by_the_small_model": small_wrote, "conditions": summary, "differences": diffs,
               "matrix_authors": matrix_authors, "matrix": matrix,
               "diagonal_wins": int(sum(int(np.argmax(row)) == n for n, row in enumerate(matrix)))}
    print("\n".join(report(results)))
    write_json(out / "results-rules.json", results)
    print(f"\ntook {time.perf_counter() - began:.0f} s; results in {out / 'results-rules.json'}")
    return results


def report(r: dict) -> list[str]:
    lines = [f"steering rules, {len(r['authors'])} Enron authors; the judge's top-1 on real test emails "
             f"{r['judge_accuracy_on_real_test_emails']:.3f} (chance {r['chance']:.3f})",
             "  condition   p(true author) [95 % over authors]   top-1        prompt tokens added"]
    for c, s in r["conditions"].items():
        p, t, n = s["p_true"], s["top1"], s["tokens_added"]
        lines.append(f"  {c:10s}  {p['mean']:.4f} [{p['low']:.4f}, {p['high']:.4f}]      {t['mean']:.3f}        {n['mean']:.0f}")
    for key, d in r["differences"].items():
        lines.append(f"  {key:22s} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]  (target > 0: "
                     f"{'PASS' if d['low'] > 0 else 'FAIL'})")
    lines.append("  author × rules matrix (rows: whose intents; columns: whose rules; the judge's p of the row's author):")
    for a, row in zip(r["matrix_authors"], r["matrix"]):
        lines.append(f"  {a[-6:]:>8s}  " + "  ".join(f"{v:.4f}{'*' if v == max(row) else ' '}" for v in row))
    lines.append(f"  the diagonal wins {r['diagonal_wins']} of {len(r['matrix'])} rows (mined rules); authors whose "
                 f"agent wrote no usable rule: {len(r['authors_without_agent'])}; held-out intents ruled by the small "
                 f"model itself: {sum(r['intents_ruled_by_the_small_model'].values())} of "
                 f"{sum(len(v) for v in r['agent_rules'].values())} (the rest: the agent's recurring rules)")
    return lines


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
