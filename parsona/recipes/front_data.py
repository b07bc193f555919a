"""Moved to :mod:`parsona.training.front_data` (library logic: several recipes and benches use it).

This name stays only while ``bench/front_quality.py`` and ``tests/parsona/test_cli.py`` still import
``parsona.recipes.front_data``; delete it once they import ``parsona.training.front_data``.
"""

from parsona.training.front_data import (BASE_SPLITS, HH_OBJECTIVES, KNOWN_OBJECTIVES, data_fingerprint,  # noqa: F401
                                         front_pairs, fully_labelled, training_pairs)
