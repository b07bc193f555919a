"""MovieLens ml-latest-small: 100,836 ratings and 3,683 tags by 610 users on 9,742 movies.

Read with the csv module (no pandas dependency). Ratings come back as plain dataclasses; use
:func:`ratings_by_user` for per-user histories.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from parsona.data.paths import data_file, row_error


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float  # 0.5 to 5 stars in half steps
    timestamp: int


@dataclass(frozen=True, slots=True)
class Tag:
    user_id: int
    movie_id: int
    tag: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Movie:
    movie_id: int
    title: str
    genres: tuple[str, ...]  # "(no genres listed)" becomes ()


def _read_csv(path: Path, header: list[str], parse):
    """Parse each data row of a csv with ``parse(row)``; a bad row names the file and line."""
    with open(path, newline="", encoding="utf-8") as f:  # read-only
        reader = csv.reader(f)
        first = next(reader, None)
        if first != header:
            raise row_error(path, 1, f"header is {first}, expected {header}")
        out = []
        for row in reader:
            try:
                out.append(parse(row))
            except (ValueError, IndexError, TypeError) as e:
                # reader.line_num is the physical line, so quoted multi-line fields still point right.
                raise row_error(path, reader.line_num, f"cannot parse {row!r} ({e})") from None
        return out


def _rating(row: list[str]) -> Rating:
    user, movie, rating, ts = row
    return Rating(int(user), int(movie), float(rating), int(ts))


def _tag(row: list[str]) -> Tag:
    user, movie, tag, ts = row
    return Tag(int(user), int(movie), tag, int(ts))


def _movie(row: list[str]) -> Movie:
    movie, title, genres = row
    return Movie(int(movie), title, () if genres == "(no genres listed)" else tuple(genres.split("|")))


def read_ratings(path: str | Path | None = None) -> list[Rating]:
    """All 100,836 ratings, in file order (grouped by user, then movie)."""
    path = Path(path) if path else data_file("movielens-latest-small", "ratings.csv")
    return _read_csv(path, ["userId", "movieId", "rating", "timestamp"], _rating)


def read_tags(path: str | Path | None = None) -> list[Tag]:
    """All 3,683 free-text tag applications."""
    path = Path(path) if path else data_file("movielens-latest-small", "tags.csv")
    return _read_csv(path, ["userId", "movieId", "tag", "timestamp"], _tag)


def read_movies(path: str | Path | None = None) -> dict[int, Movie]:
    """The 9,742 movies, keyed by movie id."""
    path = Path(path) if path else data_file("movielens-latest-small", "movies.csv")
    return {m.movie_id: m for m in _read_csv(path, ["movieId", "title", "genres"], _movie)}


def ratings_by_user(ratings: list[Rating]) -> dict[int, list[Rating]]:
    """``{user_id: [Rating, ...]}`` sorted by time, oldest first (so a prefix is a user's past)."""
    out: dict[int, list[Rating]] = {}
    for r in ratings:
        out.setdefault(r.user_id, []).append(r)
    for history in out.values():
        history.sort(key=lambda r: (r.timestamp, r.movie_id))
    return out
