"""Readers for the shared evaluation data (``../shared/data`` or ``$PARSONA_DATA``).

One small module per data set; nothing here imports torch or numpy, and nothing writes to the
data directory. See each module for the format and the row counts it returns.
"""

from parsona.data.enron import Email, read_enron, texts_by_author
from parsona.data.hh_rlhf import (
    HH_SPLITS,
    MultiObjectivePair,
    PreferencePair,
    parse_dialogue_pair,
    read_dpl_relabels,
    read_hh,
    read_objective,
    read_pairs_file,
    train_eval_split,
)
from parsona.data.movielens import Movie, Rating, Tag, ratings_by_user, read_movies, read_ratings, read_tags
from parsona.data.opinionqa import GroupOpinion, by_group, read_opinionqa
from parsona.data.paths import data_dir, split_of

__all__ = [
    "HH_SPLITS",
    "Email",
    "GroupOpinion",
    "Movie",
    "MultiObjectivePair",
    "PreferencePair",
    "Rating",
    "Tag",
    "by_group",
    "data_dir",
    "parse_dialogue_pair",
    "ratings_by_user",
    "read_dpl_relabels",
    "read_enron",
    "read_hh",
    "read_movies",
    "read_objective",
    "read_opinionqa",
    "read_pairs_file",
    "read_ratings",
    "read_tags",
    "split_of",
    "texts_by_author",
    "train_eval_split",
]
