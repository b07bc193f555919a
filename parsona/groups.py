"""Real group tasks for :class:`persona.GroupPreferencePredictor`: OpinionQA groups and MovieLens users as
Questions (one vector per option, the group's shares, the population's shares as a prior).

* OpinionQA: one question per (qkey, group); option i's vector embeds ``"Question: …\\nAnswer: <option i>"``;
  the prior is the ``Overall`` group's distribution of that question.
* MovieLens: one question per (user, movie) with the 10 rating levels 0.5 … 5 stars as its options; every
  option's vector is the movie's (``"<title> | <genres> | tags: …"``; the option's place is the
  predictor's own feature); ``dist`` is one-hot at the rating given; the prior is the smoothed
  distribution of the movie's ratings by the population (:class:`RatingPrior`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from parsona.persona.group_predictor import Question, option_text

PRIOR_GROUP = "Overall"
LEVELS = np.arange(1, 11) / 2.0          # (10,) MovieLens rating levels: 0.5, 1.0, …, 5.0 stars


@dataclass
class OpinionTasks:
    """``questions[group][qkey]``: that group's Question; ``wave[qkey]``: the survey wave it was asked in."""

    questions: dict[str, dict[str, Question]]
    wave: dict[str, str]


def opinionqa_tasks(encoder, cache_dir: str | Path, rows=None, prior_group: str = PRIOR_GROUP) -> OpinionTasks:
    """OpinionQA's 5 groups × 493 questions (or GPO-format ``rows``), embedded once by ``encoder`` (a fitted
    HistoryEncoder); a question's prior is ``prior_group``'s distribution (None where that group lacks it)."""
    from parsona.data.opinionqa import by_group, read_opinionqa

    groups = by_group(rows if rows is not None else read_opinionqa())
    prior = groups.get(prior_group, {})
    first = {}                                             # qkey -> a row (wording and options are shared)
    for table in groups.values():
        for qkey, row in table.items():
            first.setdefault(qkey, row)
    keys = sorted(first)
    texts = [option_text(first[k].question, o) for k in keys for o in first[k].options]
    X = encoder.transform_cached(texts, cache_dir)
    vectors, n = {}, 0
    for k in keys:
        vectors[k], n = X[n : n + len(first[k].options)], n + len(first[k].options)
    questions = {g: {k: Question(vectors[k], np.asarray(r.dist), np.asarray(prior[k].dist) if k in prior else None)
                     for k, r in table.items()} for g, table in groups.items()}
    return OpinionTasks(questions, {k: first[k].wave for k in keys})


def mixed_groups(tables: Sequence[dict[str, Question]], n: int, scale: float = 1.0, seed: int = 0,
                 random_scale: bool = False) -> list[list[Question]]:
    """``n`` synthetic groups, each a random combination of real groups' departures from the population,

        log p = log prior + Σ_j c_j (log p_j − log prior)    (then normalised; c_j ~ N(0, scale²), one c per group)

    over the questions every table holds. With a handful of real groups a meta-learner can learn those
    groups by heart; on these it must read a group's direction from its context (a direction that may be
    the opposite of every group it saw). With ``random_scale`` each synthetic group draws its own spread,
    c_j ~ N(0, (a·scale)²) with a ~ U(0, 1): groups near the population as well as far from it, so the
    predictor must also read *how far* a group departs (N(0, scale²) over several groups departs further
    than most real groups do, and a predictor that learns that overshoots for a group close to the
    population)."""
    from scipy.special import softmax

    from parsona.persona.group_predictor import PRIOR_FLOOR

    keys = sorted(set.intersection(*(set(t) for t in tables)))
    rng = np.random.default_rng(seed)
    logs = {k: np.stack([np.log(np.maximum(t[k].dist, PRIOR_FLOOR)) for t in tables]) for k in keys}   # (G, K)
    out = []
    for _ in range(n):
        c = rng.normal(0.0, scale, size=len(tables))
        if random_scale:
            c = c * rng.uniform()
        group = []
        for k in keys:
            first = tables[0][k]
            logprior = np.log(np.maximum(first.prior, PRIOR_FLOOR))
            z = logprior + c @ (logs[k] - logprior)
            group.append(Question(first.vectors, softmax(z), first.prior))
        out.append(group)
    return out


def movie_text(title: str, genres: Sequence[str], tags: Iterable[str] = (), max_tags: int = 5) -> str:
    """``"<title> | <genre>, <genre> | tags: <the most frequent tags>"`` (no tags part when there are none)."""
    text = f"{title} | {', '.join(genres) or 'no genre'}"
    top = [t for t, _ in Counter(t.lower() for t in tags).most_common(max_tags)]
    return f"{text} | tags: {', '.join(top)}" if top else text


def rating_dist(rating: float) -> np.ndarray:
    """(10,) one-hot at a rating's level."""
    level = int(round(rating * 2)) - 1
    if not 0 <= level < len(LEVELS) or abs(LEVELS[level] - rating) > 1e-6:
        raise ValueError(f"rating {rating} is not one of 0.5, 1.0, …, 5.0")
    out = np.zeros(len(LEVELS), dtype=np.float32)
    out[level] = 1.0
    return out


class RatingPrior:
    """The population's distribution of a movie's ratings, shrunk towards the population's distribution over
    all movies: (counts_m + α · global) / (n_m + α). ``exclude`` takes one rating out of the counts (a user's
    own, so that a user's prior never holds their answer)."""

    def __init__(self, ratings: Iterable[tuple[int, float]], alpha: float = 5.0):
        self.alpha = alpha
        self.counts_: dict[int, np.ndarray] = {}
        for movie, rating in ratings:
            self.counts_.setdefault(movie, np.zeros(len(LEVELS))) 
            self.counts_[movie] += rating_dist(rating)
        total = sum(self.counts_.values(), np.zeros(len(LEVELS))) + 1.0      # +1: no level has share 0
        self.global_ = total / total.sum()

    def __call__(self, movie: int, exclude: float | None = None) -> np.ndarray:
        counts = self.counts_.get(movie, np.zeros(len(LEVELS))).copy()
        if exclude is not None:
            if (counts - rating_dist(exclude) < 0).any():
                raise ValueError(f"movie {movie} has no rating {exclude} to leave out")
            counts -= rating_dist(exclude)
        return ((counts + self.alpha * self.global_) / (counts.sum() + self.alpha)).astype(np.float32)


def movielens_vectors(encoder, cache_dir: str | Path, movies: dict, tags: Sequence = (),
                      movie_ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """``{movie_id: (d,)}``: each movie's text (:func:`movie_text`, with ``tags`` applied to it) embedded."""
    ids = sorted(set(movie_ids) if movie_ids is not None else movies)
    by_movie: dict[int, list[str]] = {}
    for t in tags:
        by_movie.setdefault(t.movie_id, []).append(t.tag)
    X = encoder.transform_cached([movie_text(movies[m].title, movies[m].genres, by_movie.get(m, ())) for m in ids],
                                 cache_dir)
    return dict(zip(ids, X))


def movie_question(vector: np.ndarray, rating: float | None, prior: np.ndarray) -> Question:
    """One (user, movie) as a Question over the 10 levels: the movie's vector for every level (a read-only view,
    so a user's hundreds of questions cost no copies)."""
    return Question(np.broadcast_to(vector, (len(LEVELS), len(vector))),
                    rating_dist(rating) if rating is not None else None, prior)
