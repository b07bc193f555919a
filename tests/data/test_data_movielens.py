"""MovieLens readers: counts from the data README, errors."""

from __future__ import annotations

import pytest

from parsona.data.movielens import ratings_by_user, read_movies, read_ratings, read_tags
from parsona.data.paths import data_dir
from parsona.errors import ConfigError


def _have_data() -> bool:
    try:
        return (data_dir() / "movielens-latest-small").is_dir()
    except ConfigError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="shared data dir not found (set PARSONA_DATA)")


@needs_data
def test_counts_match_readme():
    ratings = read_ratings()
    assert len(ratings) == 100_836
    assert len(read_tags()) == 3_683
    movies = read_movies()
    assert len(movies) == 9_742
    users = ratings_by_user(ratings)
    assert len(users) == 610 and min(len(h) for h in users.values()) >= 20
    assert {r.rating for r in ratings} <= {x / 2 for x in range(1, 11)}
    assert movies[1].title == "Toy Story (1995)" and "Animation" in movies[1].genres


def test_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,x,4.0,100\n")
    with pytest.raises(ConfigError, match=r"ratings\.csv:3"):
        read_ratings(path)
    path.write_text("user,movie\n")
    with pytest.raises(ConfigError, match=r"ratings\.csv:1.*header"):
        read_ratings(path)
