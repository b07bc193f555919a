"""Group preference predictors (issue 21): from a group's answers to 20 questions, predict its answers to
new ones, with no gradient step. GPO (``persona.GroupPreferencePredictor``) against the baselines, on real
OpinionQA groups and MovieLens users. Questions are embedded by the base model (SmolLM2, mean-pooled last
hidden state; ``--encoder`` takes any HistoryEncoder model) and cached in out/embeddings/.

opinionqa  5 groups × 493 questions (Pew ATP). Waves sorted by number; the odd-placed ones (W29, W34, …)
           are the test waves. Each non-Overall group is a target in turn, leave-one-group-out: the
           predictors are meta-trained on the *other* groups' questions of the other waves. For ``draws``
           random draws, ``context`` of the target's test-wave questions are its context and the rest are
           queries; a question's score is its mean over the draws it was a query in. Alignment =
           1 − W1(pred, human)/(K − 1) over option positions (the extract has no per-option ordinals: the
           positions stand in for them). Methods: uniform; overall (the Overall group's answer to the
           query: the population prior, a strong baseline: it knows the question's answers); knn and
           ridge on the context's (question, option) tokens (scikit-learn), each plain and with the prior
           (predicting the group's log share over the population's); gpo and gpo_prior (the predictor with
           the population prior as a feature, ours). 95 % t intervals over questions, paired.
movielens  610 users. 20 % of them (seeded) are held out; the rest are the population (the prior, the
           collaborative baselines) and the meta-training tasks (each user's ``ml_train_cap`` latest
           ratings). A held-out user's context is their first ``context`` ratings by time; up to
           ``ml_max_queries`` of the later ones are queries. Predictions are distributions over the 10
           levels (point baselines: a point mass), scored by RMSE of their mean and W1 in stars to the
           rating given (alignment = 1 − W1/(4.5 stars)). W1 to one rating charges a distribution for its
           spread, which a point has not, so GPO is also read as a point, as the baselines are (gpo_mean,
           gpo_prior_mean: its mean; W1 |mean − rating|, that of the distribution on the two levels either
           side of the mean, the least any distribution with that mean has). Baselines: item mean (shrunk
           to the global mean), user mean (of the context), item-kNN collaborative filtering (cosine on
           mean-centred ratings of the population), and matrix factorisation (biases + truncated SVD of
           the population's residuals, the new user folded in by ridge on the context). With
           ``--ml-item-factors`` GPO's movie vectors also carry MF item factors beside the text
           embedding, fitted on a seeded half of the population while the other half are GPO's
           meta-training tasks (factors fitted on a task's own ratings would hold its answers, which a
           held-out user's never do). 95 % t intervals over users, paired.

Goals: GPO beats every baseline on average and on both Democrat and Republican (OpinionQA); GPO beats
every baseline on held-out users (MovieLens RMSE and alignment). ``--ensemble N`` makes gpo_prior the average
of N predictors from different seeds. Fitted predictors are saved to
out/models/<settings hash>/ and reused: a rerun resumes after the last finished fit.

    .venv/bin/python bench/group_predictor.py                          # SmolLM2 encoder: about an hour on 2 cores
    .venv/bin/python bench/group_predictor.py --encoder DIR --steps 5 --draws 1 --ml-users 40   # tiny: a minute
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Config:
    encoder: str | None = None
    """Encoder of (question, option) texts: HistoryEncoder model dir or HF id (default: the base model,
    SmolLM2-135M-Instruct, mean-pooled last hidden state)."""
    output_dir: str = "runs/group_predictor"
    """Embeddings, fitted predictors and results-groups.json go here; a rerun reuses them."""
    parts: str = "opinionqa,movielens"
    """Comma-separated parts: opinionqa, movielens."""
    context: int = 20
    """Answered questions (ratings) a target group (user) gives."""
    draws: int = 5
    """OpinionQA: random context draws per target group."""
    steps: int = 1000
    """Meta-training steps of each predictor."""
    d_model: int = 64
    """The predictor's width."""
    n_layers: int = 2
    """The predictor's transformer layers."""
    batch_size: int = 16
    """Tasks per meta-training step."""
    learning_rate: float = 1e-3
    """AdamW learning rate of the predictor."""
    mixed_groups: int = 200
    """OpinionQA: synthetic groups (random combinations of the training groups' departures from Overall)
    added to gpo_prior's meta-training tasks (0: the real groups only)."""
    mix_scale: float = 1.0
    """Spread of the synthetic groups' combination coefficients."""
    mix_random_scale: bool = False
    """Each synthetic group draws its own spread, uniform in [0, mix_scale]: groups close to the population too,
    so that gpo_prior learns to read how far a group departs from its context."""
    knn_k: int = 5
    """Neighbours of the token kNN baseline (OpinionQA)."""
    ml_test_share: float = 0.2
    """MovieLens: share of users held out."""
    ml_max_queries: int = 50
    """MovieLens: held-out ratings scored per held-out user (their earliest after the context)."""
    ml_train_cap: int = 300
    """MovieLens: latest ratings of a population user used as their meta-training task."""
    ml_users: int = 0
    """MovieLens: only this many users (0: all 610; for smoke runs)."""
    ml_factors: int = 20
    """MovieLens: item factors of the matrix-factorisation baseline (truncated SVD of the population)."""
    ml_item_factors: bool = False
    """MovieLens: GPO's movie vectors also hold MF item factors (standardised; fitted on half the population, the
    other half GPO's tasks), the collaborative signal the MF baseline folds a user into; otherwise GPO sees only
    the movie's text embedding and its prior."""
    loss: str = "cross_entropy"
    """Meta-training loss of the GPO predictors: cross_entropy (the paper's), ordinal_w1 (W1 over the ordinal
    options, what the alignment score measures: a point-like prediction where the answer is one rating) or
    cross_entropy_w1 (their sum, W1 in option steps)."""
    seed: int = 0
    """Seed of the splits, the context draws and the predictors."""
    mean_shift: bool = False
    """GPO's context tokens also carry their question's mean shift, how far up the scale the answer sits from the
    prior's (the one number a rating mostly says; ``GroupPreferencePredictor(mean_shift=True)``)."""
    ensemble: int = 1
    """gpo_prior: this many predictors, meta-trained from seeds seed, seed + 1, …, their distributions averaged
    (each fit cached on its own; gpo stays one predictor, the paper's)."""

    def __post_init__(self) -> None:
        from parsona.errors import ConfigError
        from parsona.persona.group_predictor import LOSSES

        if self.loss not in LOSSES:
            raise ConfigError("loss", f"Choose one of {', '.join(sorted(LOSSES))}.", problem=f"got {self.loss!r}")
        if self.ensemble < 1:
            raise ConfigError("ensemble", "Give 1 or more predictors.", problem=f"got {self.ensemble}")


def predictor(cfg: Config, use_prior: bool, max_context: int, max_targets: int, seed: int | None = None):
    from parsona.persona import GroupPreferencePredictor
    from parsona.persona.group_predictor import LOSSES

    return GroupPreferencePredictor(d_model=cfg.d_model, n_layers=cfg.n_layers, steps=cfg.steps,
                                    batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                                    max_context=max_context, max_targets=max_targets, use_prior=use_prior,
                                    mean_shift=cfg.mean_shift,
                                    loss=LOSSES[cfg.loss], seed=cfg.seed if seed is None else seed)


class Averaged:
    """Predictors' distributions averaged, query by query: an ensemble of meta-learners from different seeds."""

    def __init__(self, models: list):
        self.models = models

    def predict(self, context, queries) -> list[np.ndarray]:
        return [np.mean(ps, axis=0) for ps in zip(*(m.predict(context, queries) for m in self.models))]


def fit_models(cfg: Config, groups: list, prior_groups: list, out: Path, key: dict, prior_key: dict,
               max_context: int, max_targets: int) -> dict:
    """{"gpo": one predictor on ``groups``, "gpo_prior": ``cfg.ensemble`` of them (with the prior) on
    ``prior_groups``}, each fit cached."""
    gpo = fit_cached(predictor(cfg, False, max_context, max_targets), groups, out, key)
    priors = [fit_cached(predictor(cfg, True, max_context, max_targets, cfg.seed + i), prior_groups, out, prior_key)
              for i in range(cfg.ensemble)]
    return {"gpo": gpo, "gpo_prior": priors[0] if cfg.ensemble == 1 else Averaged(priors)}


def fit_cached(model, groups: list, out: Path, key: dict):
    """``model.fit(groups)``, or the predictor a run with the same settings and data saved."""
    from parsona.persona import GroupPreferencePredictor

    settings = {**key, **model.get_params(), "loss": getattr(model.loss, "__name__", str(model.loss))}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    path = out / "models" / digest.hexdigest()[:16]
    if (path / "group_predictor.json").is_file():
        return GroupPreferencePredictor.load(path)
    return GroupPreferencePredictor.load(model.fit(groups).save(path))


def _tokens(questions, use_prior: bool):
    """Token features [vector, place, 1/K] (+ log prior), shares y and log prior of each option, question ids."""
    from parsona.persona.group_predictor import PRIOR_FLOOR

    rows, y, logprior, qid = [], [], [], []
    for j, q in enumerate(questions):
        k = len(q.vectors)
        extra = [np.arange(k)[:, None] / (k - 1), np.full((k, 1), 1.0 / k)]
        lp = np.log(np.maximum(q.prior, PRIOR_FLOOR)) if use_prior else np.zeros(k)
        rows.append(np.hstack([q.vectors, *extra, lp[:, None]] if use_prior else [q.vectors, *extra]))
        y.append(q.dist if q.dist is not None else np.zeros(k))
        logprior.append(lp)
        qid.append(np.full(k, j))
    return np.vstack(rows), np.concatenate(y), np.concatenate(logprior), np.concatenate(qid)


def _per_question(scores: np.ndarray, qid: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for j in range(n):
        s = np.maximum(scores[qid == j], 1e-6)
        out.append(s / s.sum())
    return out


def _target(y, logprior, k_of, use_prior):
    """What the token baselines regress: the share relative to uniform, or the log share over the prior's."""
    from parsona.persona.group_predictor import PRIOR_FLOOR

    return np.log(np.maximum(y, PRIOR_FLOOR)) - logprior if use_prior else y * k_of


def _untarget(pred, logprior, qid, n, use_prior):
    return _per_question(np.exp(logprior + pred) if use_prior else pred, qid, n)


def knn(context, queries, k: int, use_prior: bool):
    """Each query option: the mean target of its k nearest context options (cosine on the vectors)."""
    from sklearn.neighbors import NearestNeighbors

    Xc, yc, lpc, qc = _tokens(context, use_prior)
    Xq, _, lpq, qq = _tokens(queries, use_prior)
    d = context[0].vectors.shape[1]
    k_of = np.bincount(qc)[qc]
    nn = NearestNeighbors(n_neighbors=min(k, len(Xc)), metric="cosine").fit(Xc[:, :d])
    idx = nn.kneighbors(Xq[:, :d], return_distance=False)                    # (Nq, k)
    pred = _target(yc, lpc, k_of, use_prior)[idx].mean(1)
    return _untarget(pred, lpq, qq, len(queries), use_prior)


def ridge(context, queries, use_prior: bool):
    """A ridge regression (alpha by leave-one-out CV) from token features to the target, on the context."""
    from sklearn.linear_model import RidgeCV

    Xc, yc, lpc, qc = _tokens(context, use_prior)
    Xq, _, lpq, qq = _tokens(queries, use_prior)
    model = RidgeCV(alphas=(0.1, 1.0, 10.0, 100.0)).fit(Xc, _target(yc, lpc, np.bincount(qc)[qc], use_prior))
    return _untarget(model.predict(Xq), lpq, qq, len(queries), use_prior)


def opinionqa(cfg: Config, encoder, out: Path) -> dict:
    from parsona.groups import PRIOR_GROUP, mixed_groups, opinionqa_tasks
    from parsona.persona.group_predictor import alignment

    tasks = opinionqa_tasks(encoder, out / "embeddings")
    waves = sorted(set(tasks.wave.values()), key=lambda w: int(w.lstrip("W")))
    test_waves = set(waves[1::2])
    results = {"test_waves": sorted(test_waves), "groups": {}}
    for target in [g for g in tasks.questions if g != PRIOR_GROUP]:
        tables = [{k: q for k, q in table.items() if tasks.wave[k] not in test_waves}
                  for g, table in tasks.questions.items() if g != target]
        train = [list(t.values()) for t in tables]
        mixed = mixed_groups(tables, cfg.mixed_groups, cfg.mix_scale, cfg.seed, cfg.mix_random_scale)
        mix = {"mixed_groups": cfg.mixed_groups, "mix_scale": cfg.mix_scale,
               **({"mix_random_scale": True} if cfg.mix_random_scale else {})}      # earlier runs' fits keep their keys
        key = {"part": "opinionqa", "target": target, "encoder": encoder.key, "test_waves": sorted(test_waves)}
        models = fit_models(cfg, train, train + mixed, out, key, {**key, **mix}, 40, 40)
        test_keys = sorted(k for k in tasks.questions[target] if tasks.wave[k] in test_waves)
        scores = defaultdict(lambda: defaultdict(list))                      # method -> qkey -> per draw
        rng = np.random.default_rng(cfg.seed)
        for _ in range(cfg.draws):
            order = rng.permutation(len(test_keys))
            ctx = [tasks.questions[target][test_keys[i]] for i in order[: cfg.context]]
            query_keys = [test_keys[i] for i in order[cfg.context :]]
            queries = [tasks.questions[target][k] for k in query_keys]
            preds = {"uniform": [np.full(len(q.vectors), 1 / len(q.vectors)) for q in queries],
                     "overall": [q.prior for q in queries],
                     "knn": knn(ctx, queries, cfg.knn_k, False), "knn_prior": knn(ctx, queries, cfg.knn_k, True),
                     "ridge": ridge(ctx, queries, False), "ridge_prior": ridge(ctx, queries, True),
                     **{name: m.predict(ctx, queries) for name, m in models.items()}}
            for method, ps in preds.items():
                for k, p, q in zip(query_keys, ps, queries):
                    scores[method][k].append(alignment(p, q.dist))
        results["groups"][target] = {m: [float(np.mean(v[k])) for k in sorted(v)] for m, v in scores.items()}
        print(f"  {target}: " + ", ".join(f"{m} {np.mean(s):.4f}" for m, s in results["groups"][target].items()),
              flush=True)
    return results


def main(cfg: Config) -> dict:
    from parsona.base_model import _resolve
    from parsona.io import write_json
    from parsona.persona import HistoryEncoder

    began = time.perf_counter()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    out = Path(cfg.output_dir)
    encoder = HistoryEncoder(model=cfg.encoder or _resolve(None), batch_size=16, max_length=128).fit()
    parts = [p.strip() for p in cfg.parts.split(",") if p.strip()]
    unknown = set(parts) - {"opinionqa", "movielens"}
    if unknown:
        from parsona.errors import ConfigError

        raise ConfigError("parts", "Use opinionqa and/or movielens.", problem=f"unknown {sorted(unknown)}")
    results = {"config": asdict(cfg), "encoder": encoder.key}
    if "opinionqa" in parts:
        results["opinionqa"] = opinionqa(cfg, encoder, out)
    if "movielens" in parts:
        from group_predictor_movielens import movielens

        results["movielens"] = movielens(cfg, encoder, out)
    print("\n".join(report(results)))
    write_json(out / "results-groups.json", results)
    print(f"\ntook {time.perf_counter() - began:.0f} s; results in {out / 'results-groups.json'}")
    return results


def _interval(values) -> str:
    from parsona.bootstrap import t_interval

    t = t_interval(values)
    return f"{t['mean']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}]"


def report(r: dict) -> list[str]:
    from parsona.bootstrap import t_interval

    lines = []
    if "opinionqa" in r:
        o = r["opinionqa"]
        lines.append(f"OpinionQA alignment (test waves {', '.join(o['test_waves'])}; mean [95 % over questions])")
        best = "gpo_prior"
        wins = []
        for group, scores in o["groups"].items():
            lines.append(f"  {group} ({len(scores['uniform'])} questions)")
            for m, s in scores.items():
                t = t_interval(s)
                lines.append(f"    {m:12s} {t['mean']:.4f} [{t['low']:.4f}, {t['high']:.4f}]")
            for m in scores:
                if m.startswith("gpo"):
                    continue
                diff = np.asarray(scores[best]) - np.asarray(scores[m])
                wins.append((group, m, float(diff.mean())))
                lines.append(f"    {best} − {m:12s} {_interval(diff)}")
        groups = list(o["groups"])
        for m in o["groups"][groups[0]]:
            mean = np.mean([np.mean(o["groups"][g][m]) for g in groups])
            lines.append(f"  mean over groups: {m:12s} {mean:.4f}")
        beat = {g: all(d > 0 for gg, m, d in wins if gg == g) for g in groups}
        lines.append(f"  goal ({best} beats every baseline on Democrat and Republican): "
                     f"{'PASS' if beat.get('Democrat') and beat.get('Republican') else 'FAIL'}; beats all on "
                     f"{sum(beat.values())} of {len(groups)} groups")
    if "movielens" in r:
        from group_predictor_movielens import report_movielens

        lines += report_movielens(r["movielens"])
    return lines


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
