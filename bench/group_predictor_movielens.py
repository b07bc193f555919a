"""The MovieLens part of bench/group_predictor.py: held-out users' ratings from their first 20 (see there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPAN = 4.5          # stars from the lowest level to the highest: alignment = 1 − W1 / SPAN


def split_users(users: list[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(population, held out): ``share`` of the users, drawn with ``seed``."""
    order = np.random.default_rng(seed).permutation(len(users))
    n = max(1, round(share * len(users)))
    held = sorted(users[i] for i in order[:n])
    return sorted(set(users) - set(held)), held


class Collaborative:
    """The population's ratings as a sparse (items × users) matrix, for the item-kNN and MF baselines."""

    def __init__(self, history: dict[int, list], population: list[int], factors: int, seed: int):
        import scipy.sparse as sp
        from sklearn.decomposition import TruncatedSVD

        pairs = [(r.movie_id, u, r.rating) for u in population for r in history[u]]
        self.items = {m: i for i, m in enumerate(sorted({m for m, _, _ in pairs}))}
        cols = {u: j for j, u in enumerate(population)}
        rows = np.array([self.items[m] for m, _, _ in pairs])
        users = np.array([cols[u] for _, u, _ in pairs])
        r = np.array([x for _, _, x in pairs])
        self.mu = float(r.mean())
        n_i = np.bincount(rows, minlength=len(self.items))
        self.b_item = np.bincount(rows, r - self.mu, minlength=len(self.items)) / (n_i + 10.0)   # shrunk to 0
        res = r - self.mu - self.b_item[rows]
        b_user = np.bincount(users, res, minlength=len(cols)) / (np.bincount(users, minlength=len(cols)) + 10.0)
        user_mean = np.bincount(users, r, minlength=len(cols)) / np.bincount(users, minlength=len(cols))
        shape = (len(self.items), len(cols))
        self.centred = sp.csr_matrix((r - user_mean[users], (rows, users)), shape=shape)     # for item-kNN cosine
        self.svd = TruncatedSVD(factors, random_state=seed).fit(sp.csr_matrix((res - b_user[users], (rows, users)),
                                                                              shape=shape).T)
        self.V = self.svd.components_.T                                                   # (items, factors)

    def with_item_factors(self, vectors: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Each movie's vector with its item factors appended, each factor standardised over the items (SVD
        components are unit-norm columns, ~1/√items per entry: too small beside an embedding); zeros, the
        mean, for a movie no user of these ratings rated."""
        V = (self.V - self.V.mean(0)) / np.maximum(self.V.std(0), 1e-12)
        zero = np.zeros(V.shape[1], dtype=np.float32)
        return {m: np.concatenate([v, V[self.row(m)].astype(np.float32) if self.row(m) is not None else zero])
                for m, v in vectors.items()}

    def row(self, movie: int) -> int | None:
        return self.items.get(movie)

    def item_knn(self, ctx: list, queries: list, k: int = 20) -> np.ndarray:
        """User mean + the similarity-weighted mean departure of their ratings of the k most similar context movies."""
        from sklearn.metrics.pairwise import cosine_similarity

        mean = float(np.mean([r.rating for r in ctx]))
        known = [(self.row(r.movie_id), r.rating - mean) for r in ctx if self.row(r.movie_id) is not None]
        out = np.full(len(queries), mean)
        if not known:
            return out
        for n, q in enumerate(queries):
            j = self.row(q.movie_id)
            if j is None:
                continue
            sims = cosine_similarity(self.centred[j], self.centred[[i for i, _ in known]]).ravel()
            top = np.argsort(-sims)[:k]
            top = top[sims[top] > 0]
            if len(top):
                out[n] = mean + float(sims[top] @ np.array([known[t][1] for t in top]) / sims[top].sum())
        return np.clip(out, 0.5, 5.0)

    def mf(self, ctx: list, queries: list) -> np.ndarray:
        """Biases + factors; the new user's bias (shrunk mean) and factors (ridge, alpha by CV) from the context."""
        from sklearn.linear_model import RidgeCV

        def parts(ratings):
            rows = [self.row(r.movie_id) for r in ratings]
            b = np.array([self.b_item[i] if i is not None else 0.0 for i in rows])
            V = np.array([self.V[i] if i is not None else np.zeros(self.V.shape[1]) for i in rows])
            return b, V

        b_c, V_c = parts(ctx)
        res = np.array([r.rating for r in ctx]) - self.mu - b_c
        b_u = res.sum() / (len(res) + 10.0)
        user = RidgeCV(alphas=(0.1, 1.0, 10.0, 100.0), fit_intercept=False).fit(V_c, res - b_u)
        b_q, V_q = parts(queries)
        return np.clip(self.mu + b_u + b_q + user.predict(V_q), 0.5, 5.0)


def scores(pred, ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared error of the mean, W1 in stars) per query; ``pred`` is (n,) points or (n, 10) distributions."""
    from parsona.groups import LEVELS

    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 1:
        return (pred - ratings) ** 2, np.abs(pred - ratings)
    truth = (LEVELS[None] >= ratings[:, None]).astype(float)                     # CDF of the rating given
    w1 = np.abs(np.cumsum(pred, 1) - truth)[:, :-1].sum(1) * 0.5
    return (pred @ LEVELS - ratings) ** 2, w1


def movielens(cfg, encoder, out: Path) -> dict:
    from group_predictor import fit_models

    from parsona.data.movielens import ratings_by_user, read_movies, read_ratings, read_tags
    from parsona.groups import LEVELS, RatingPrior, movie_question, movielens_vectors

    history = ratings_by_user(read_ratings())
    users = sorted(history)[: cfg.ml_users or None]
    population, held = split_users(users, cfg.ml_test_share, cfg.seed)
    prior = RatingPrior((r.movie_id, r.rating) for u in population for r in history[u])
    pop = set(population)
    vectors = movielens_vectors(encoder, out / "embeddings", read_movies(),
                                [t for t in read_tags() if t.user_id in pop],
                                {r.movie_id for u in users for r in history[u]})
    cf = Collaborative(history, population, factors=cfg.ml_factors, seed=cfg.seed)
    key = {"part": "movielens", "encoder": encoder.key, "population": population, "cap": cfg.ml_train_cap}
    tasks = population
    if cfg.ml_item_factors:     # factors from half the population, tasks from the other: no task saw its own answers
        tasks, factor_users = split_users(population, 0.5, cfg.seed + 1)
        vectors = Collaborative(history, factor_users, cfg.ml_factors, cfg.seed).with_item_factors(vectors)
        key["item_factors"] = cfg.ml_factors
    train = [[movie_question(vectors[r.movie_id], r.rating, prior(r.movie_id, exclude=r.rating))
              for r in history[u][-cfg.ml_train_cap:]] for u in tasks]
    models = fit_models(cfg, train, train, out, key, key, 30, 20)
    def as_questions(ratings, answered: bool):
        return [movie_question(vectors[r.movie_id], r.rating if answered else None, prior(r.movie_id)) for r in ratings]

    per_user = {}
    for u in held:
        ctx, queries = history[u][: cfg.context], history[u][cfg.context : cfg.context + cfg.ml_max_queries]
        if not queries:
            continue
        ratings = np.array([r.rating for r in queries])
        preds = {"item_mean": np.array([prior(r.movie_id) @ LEVELS for r in queries]),
                 "user_mean": np.full(len(queries), np.mean([r.rating for r in ctx])),
                 "item_knn": cf.item_knn(ctx, queries), "mf": cf.mf(ctx, queries),
                 **{name: np.stack(m.predict(as_questions(ctx, True), as_questions(queries, False))) for name, m in models.items()}}
        preds |= {f"{name}_mean": preds[name] @ LEVELS for name in models}      # GPO read as a point, as the baselines are
        per_user[u] = {m: [float(v.mean()) for v in scores(p, ratings)] + [len(queries)] for m, p in preds.items()}
    return {"population": len(population), "held_out": len(per_user), "per_user": per_user}


def report_movielens(r: dict) -> list[str]:
    from parsona.bootstrap import t_interval

    users = list(r["per_user"])
    methods = list(r["per_user"][users[0]])
    table = {m: np.array([r["per_user"][u][m] for u in users]) for m in methods}   # (users, [mse, w1, n])
    n = table[methods[0]][:, 2]
    lines = [f"MovieLens: {r['held_out']} held-out users (population {r['population']}); pooled over "
             f"{int(n.sum())} ratings, paired differences over users",
             "  method          RMSE     alignment (1 − W1/4.5 stars)"]
    for m in methods:
        rmse = np.sqrt((table[m][:, 0] * n).sum() / n.sum())
        align = 1 - (table[m][:, 1] * n).sum() / n.sum() / SPAN
        lines.append(f"  {m:14s}  {rmse:.4f}   {align:.4f}")
    for best in ("gpo_prior", "gpo_prior_mean"):
        ok = True
        for m in methods:
            if m.startswith("gpo"):
                continue
            d_mse = t_interval(table[best][:, 0] - table[m][:, 0])
            d_w1 = t_interval(table[best][:, 1] - table[m][:, 1])
            ok &= d_mse["high"] < 0 and d_w1["high"] < 0
            lines.append(f"  {best} − {m:9s}  squared error {d_mse['mean']:+.4f} [{d_mse['low']:+.4f}, "
                         f"{d_mse['high']:+.4f}]   W1 {d_w1['mean']:+.4f} [{d_w1['low']:+.4f}, {d_w1['high']:+.4f}]")
        lines.append(f"  goal ({best} beats every baseline on both, intervals below 0): {'PASS' if ok else 'FAIL'}")
    return lines
