"""Best-of-n: sample n replies to one request in one batch, keep the one a reward scores highest.

    best, scores, replies = best_of_n(host, Request(prompt=..., temperature=0.8), reward, n=4)

The n rows differ only in their sampling seed (``seed``, ``seed + 1``, …; 0, 1, … when the request has
none), so they batch as one decode and a rerun with the same seed picks the same reply. With a
``objectives.GroupPreferenceReward`` this answers as a group would prefer: the n replies are the options
of one question and the group's predicted shares rank them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from parsona.errors import ConfigError
from parsona.host_checks import Completion, Request

MAX_N = 16


def prompt_text(request: Request) -> str:
    """What a reward reads as the prompt: the text prompt, or the last user message of a chat."""
    if isinstance(request.prompt, str):
        return request.prompt
    for message in reversed(request.messages or []):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    raise ConfigError("prompt", "Best-of-n needs a text prompt or a chat with a user message to score replies to.",
                      problem="neither was given")


def best_of_n(host, request: Request, reward, n: int = 4) -> tuple[Completion, np.ndarray, Sequence[Completion]]:
    """(the best reply, every reply's score (n,), the n replies); ties go to the first."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise ConfigError("n", f"Use a whole number from 1 to {MAX_N}.", problem=f"got {n!r}")
    if n > 1 and not request.temperature > 0:
        raise ConfigError("temperature", "Best-of-n compares samples: use a temperature above 0.",
                          problem=f"got {request.temperature!r}")
    prompt = prompt_text(request)
    base = request.seed if request.seed is not None else 0
    replies = host.generate([dataclasses.replace(request, seed=base + i) for i in range(n)])
    scores = np.asarray(reward.score([prompt] * n, [r.text for r in replies]), dtype=np.float64)
    if scores.shape != (n,) or not np.isfinite(scores).all():
        raise ConfigError("reward", "Return one finite score per reply.", problem=f"got shape {scores.shape}")
    return replies[int(np.argmax(scores))], scores, replies
