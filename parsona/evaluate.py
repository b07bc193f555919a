"""Evaluate a trade-off front: one policy per λ of a grid, scored per objective, then indicators.

    result = evaluate_front(model, tokenizer, policy, eval_pairs, ("helpful", "harmless"),
                            simplex_grid(2, 10), method="panacea")
    table = compare([result, soups, dps])          # HV, IGD+ (vs the union front), sparsity, IP, ρ

Two scores per λ (``policy.at(λ)`` merges the policy's ΔW(λ) into W0; see front_policies.py):

* cheap, always: on held-out pairs, the DPO implicit reward r = β (log π − log π_ref) of each
  reply. Per objective i, over the pairs labelled for i only: accuracy = how often the reply
  labelled better gets the larger r (an exact tie counts ½, so the reference model itself scores
  the random-guess level 0.5), and the held-out DPO loss. π_ref does not depend on λ, so its
  log-probs are computed once per call (or passed in, once for several methods).
* real, when ``reward_models`` are given: greedy replies to held-out prompts at each λ, scored
  by one reward model per objective (anything with ``score(prompts, responses) -> (n,)``).

Indicators use the real rewards when there are any, else the accuracies. All are maximised.
The hypervolume's reference point is fixed before the run and stored next to every HV value:
for accuracies it defaults to :data:`ACCURACY_REFERENCE` = 0.4 per objective, the random-guess
level 0.5 minus a 0.1 margin: a λ counts only while it is no more than 10 points worse than
chance on every objective, so a front may trade one objective for another but a collapsed
objective adds nothing. Rewards have no such natural level; pass ``reference_point``, e.g.
:func:`base_reward_reference`: the base model's mean reward minus :data:`REWARD_MARGIN` (the same
10 points of preference probability, for Bradley-Terry rewards).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from parsona.errors import ConfigError

ACCURACY_REFERENCE = 0.4
REWARD_MARGIN = 0.4  # Bradley-Terry rewards: a gap of 0.4 is P(preferred) = σ(0.4) ≈ 0.6, the accuracy margin
HUMAN_TURN = "\n\nHuman:"  # HH dialogues: a greedy reply that starts the next user turn is cut there


@dataclass
class FrontResult:
    """One method's front: a row per λ, and its indicators (see :func:`indicators`)."""

    method: str
    objectives: tuple[str, ...]
    preferences: np.ndarray                 # (K, m) the grid
    accuracy: np.ndarray                    # (K, m) held-out preference accuracy of the implicit reward
    dpo_loss: np.ndarray                    # (K, m) held-out DPO loss (lower is better)
    n_labelled: list[int]                   # (m,) eval pairs labelled per objective
    reference_point: np.ndarray             # (m,) of the hypervolume, fixed before the run
    reward: np.ndarray | None = None        # (K, m) mean reward of greedy replies, if scored
    pair_correct: np.ndarray | None = None  # (K, N, m) per eval pair: 1 right, ½ tie, 0 wrong, NaN unlabelled
    prompt_reward: np.ndarray | None = None  # (K, P, m) per eval prompt: the reward of its greedy reply
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)   # budget: steps, tokens, train seconds ...

    @property
    def metric(self) -> str:
        return "reward" if self.reward is not None else "accuracy"

    @property
    def points(self) -> np.ndarray:
        """(K, m) the objective values the indicators are computed on."""
        return self.reward if self.reward is not None else self.accuracy

    @property
    def unit_scores(self) -> np.ndarray | None:
        """(K, n, m) the per-pair or per-prompt scores whose mean over n (NaN skipped) is :attr:`points`."""
        return self.prompt_reward if self.reward is not None else self.pair_correct

    def rows(self) -> list[dict[str, Any]]:
        """One dict per λ: preference, then accuracy / DPO loss / reward per objective."""
        out = []
        for k, lam in enumerate(self.preferences):
            row: dict[str, Any] = {"method": self.method, "preference": [round(float(x), 6) for x in lam]}
            for i, o in enumerate(self.objectives):
                row[f"accuracy_{o}"] = float(self.accuracy[k, i])
                row[f"dpo_loss_{o}"] = float(self.dpo_loss[k, i])
                if self.reward is not None:
                    row[f"reward_{o}"] = float(self.reward[k, i])
            out.append(row)
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        obj = {"method": self.method, "objectives": list(self.objectives), "metric": self.metric,
               "reference_point": self.reference_point.tolist(), "n_labelled": self.n_labelled,
               "indicators": indicators(self), "seconds": round(self.seconds, 2), "info": self.info, "rows": self.rows()}
        text = json.dumps(_finite(obj), indent=2) + "\n"
        if path is not None:
            from parsona.io import atomic_file

            with atomic_file(path) as f:
                f.write(text)
        return text

    def csv_rows(self) -> list[dict[str, Any]]:
        """:meth:`rows` with the preference as one column per objective (``preference_helpful``, ...)."""
        return [{"method": r["method"], **{f"preference_{o}": x for o, x in zip(self.objectives, r.pop("preference"))},
                 **{k: v for k, v in r.items() if k != "method"}} for r in self.rows()]

    def to_csv(self, path: str | Path | None = None) -> str:
        rows = self.csv_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        if path is not None:
            from parsona.io import atomic_file

            with atomic_file(path) as f:
                f.write(buffer.getvalue())
        return buffer.getvalue()


def _finite(obj: Any) -> Any:
    """NaN (e.g. ρ of a constant column) becomes null, so the JSON is standard."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# -- scoring ----------------------------------------------------------------------------------

def _tokenized(tokenizer, pairs, max_length: int) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt ids, [reply a ids, reply b ids]) per pair, cut as the training step cuts them."""
    from parsona.logprobs import tokenize_pair

    return [tokenize_pair(tokenizer, p.prompt, [p.response_a, p.response_b], max_length) for p in pairs]


@torch.no_grad()
def _logps(scorer, tokenized, pad_id: int, inputs: dict | None = None, n_rows: int = 1) -> torch.Tensor:
    """(K, 2, N) summed log-probs of reply a (index 0) and b (1) of every pair, row k under row k's
    adapter ``inputs`` (K = ``n_rows``; none: whatever the model is now). Pair by pair, the prompt runs
    once for both replies and, with per-row inputs, once for every λ of the grid in the same forward."""
    per_pair = [scorer.rows(prompt, replies, pad_id, n_rows=n_rows, **(inputs or {})).float().cpu()   # (K, 2)
                for prompt, replies in tokenized]
    return torch.stack(per_pair, dim=-1)                                                             # (K, 2, N)


def _grid_logps(scorer, policy, grid: np.ndarray, tokenized, pad_id: int, progress) -> torch.Tensor:
    """(K, 2, N) the policy's log-probs at every λ of ``grid`` (K, m): one forward per pair for the whole
    grid where the policy takes λ per row (``row_inputs``), else λ by λ with ΔW(λ) merged."""
    inputs = policy.row_inputs(grid) if hasattr(policy, "row_inputs") else None
    if inputs is not None:
        return _logps(scorer, progress(tokenized), pad_id, inputs, n_rows=len(grid))
    out = []
    for lam in progress(grid):
        with policy.at(lam.tolist()):
            out.append(_logps(scorer, tokenized, pad_id)[0])                                        # (2, N)
    return torch.stack(out)


def pair_scores(policy_logps: torch.Tensor, reference_logps: torch.Tensor, a_wins: torch.Tensor,
                has_label: torch.Tensor, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy (m,) and mean DPO loss (m,) over the labelled pairs, and each pair's score (N, m)
    (1 right, ½ tie, 0 wrong, NaN unlabelled: what a bootstrap over pairs resamples), from (2, N) log-probs."""
    from parsona.objectives import dpo_loss
    from parsona.training.step import per_objective_losses

    reward = beta * (policy_logps - reference_logps)                 # (2, N) implicit reward of a, b
    margin = reward[0] - reward[1]                                   # (N,) > 0: a looks better
    sign = torch.where(a_wins.bool(), 1.0, -1.0)                     # (N, m) +1 where a is labelled better
    correct = ((margin[:, None] * sign).sign() + 1) / 2              # (N, m) 1 right, ½ tie, 0 wrong
    n = has_label.sum(0).clamp(min=1)                                # (m,)
    accuracy = (correct * has_label).sum(0) / n                      # (m,)
    flat_policy, flat_reference = policy_logps.reshape(-1), reference_logps.reshape(-1)   # [a..., b...] (2N,)
    losses = per_objective_losses(dpo_loss, flat_policy, flat_reference, a_wins, has_label, beta)  # (N, m)
    per_pair = torch.where(has_label.bool(), correct, torch.nan)     # (N, m)
    return accuracy.numpy(), (losses.sum(0) / n).numpy(), per_pair.numpy()


def greedy_replies(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, max_length: int,
                   batch_size: int = 8) -> list[str]:
    """Greedy continuations of raw prompts (the text the pairs were scored after, no chat template),
    decoded by the host, as every generation is; each prompt keeps its last max_length - max_new_tokens tokens."""
    from parsona.host import Host, Request

    keep = max(1, max_length - max_new_tokens)                         # prompt tokens kept, from the end
    # store-less, no per-row inputs (whatever ``policy.at(λ)`` merged is the model), limits from the arguments
    host = Host(model, tokenizer, max_prompt_tokens=keep, max_new_tokens_limit=max_new_tokens)
    requests = [Request(prompt=tokenizer(p, add_special_tokens=False)["input_ids"][-keep:], max_new_tokens=max_new_tokens)
                for p in prompts]
    replies = []
    for s in range(0, len(requests), batch_size):
        replies += [c.text.split(HUMAN_TURN)[0].strip() for c in host.generate(requests[s : s + batch_size])]
    return replies


def eval_prompts(pairs) -> list[str]:
    """The distinct prompts of the eval pairs, in order: what the real eval generates for."""
    return list(dict.fromkeys(p.prompt for p in pairs))


def reply_rewards(model, tokenizer, prompts: Sequence[str], reward_models: Mapping[str, Any],
                  objectives: Sequence[str], *, max_new_tokens: int, max_length: int, batch_size: int = 8) -> np.ndarray:
    """(P, m) each objective's reward of ``model``'s greedy reply to each prompt."""
    prompts = list(prompts)
    replies = greedy_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens, max_length=max_length,
                             batch_size=batch_size)
    return np.stack([np.asarray(reward_models[o].score(prompts, replies), dtype=float) for o in objectives], axis=1)


def base_reward_reference(model, tokenizer, prompts: Sequence[str], reward_models: Mapping[str, Any],
                          objectives: Sequence[str], *, margin: float = REWARD_MARGIN, max_new_tokens: int = 48,
                          max_length: int = 256, batch_size: int = 8) -> np.ndarray:
    """(m,) an HV reference point for rewards, fixed before any policy is scored: the mean reward of
    ``model``'s own greedy replies (call it on the base model: no adapter, or inside
    ``policy.reference()``) minus ``margin`` per objective."""
    return reply_rewards(model, tokenizer, prompts, reward_models, objectives, max_new_tokens=max_new_tokens,
                         max_length=max_length, batch_size=batch_size).mean(axis=0) - margin


def evaluate_front(model, tokenizer, policy, eval_pairs, objectives: Sequence[str], grid, *, beta: float = 0.1,
                   max_length: int = 256, max_pairs: int | None = None, batch_size: int = 8,
                   reward_models: Mapping[str, Any] | None = None, prompts: Sequence[str] | None = None,
                   max_new_tokens: int = 48, reference_point=None, reference_logps: torch.Tensor | None = None,
                   method: str = "", progress: bool = True) -> FrontResult:
    """Score ``policy`` at every λ of ``grid`` (K, m) on held-out data; see the module docstring.

    ``reward_models`` maps each objective to a reward model (real eval, needs ``reference_point``);
    ``prompts`` default to the distinct prompts of the evaluated pairs. ``reference_logps`` (2, N)
    from :func:`reference_logprobs` skips the reference pass when several methods share the data.
    """
    from tqdm.auto import tqdm

    from parsona.logprobs import PairLogProbs
    from parsona.training.step import label_tensors

    objectives = tuple(objectives)
    m = len(objectives)
    grid = np.asarray(grid.detach().cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != m or policy.n_objectives != m:
        raise ConfigError("grid", f"Pass (K, {m}) preferences, one column per objective, for a policy of {m} "
                          "objectives.", problem=f"grid {grid.shape}, policy n_objectives {policy.n_objectives}")
    pairs = list(eval_pairs)[:max_pairs]
    if not pairs:
        raise ConfigError("eval_pairs", "Pass at least one held-out pair.", problem="empty")
    if reward_models is not None and set(reward_models) != set(objectives):
        raise ConfigError("reward_models", f"Give one reward model per objective {objectives}.",
                          problem=f"got {sorted(reward_models)}")
    if reference_point is None and reward_models is not None:
        raise ConfigError("reference_point", "Fix the HV reference point for rewards before the run, e.g. the "
                          "base model's mean reward per objective.", problem="missing")
    ref_point = np.full(m, ACCURACY_REFERENCE) if reference_point is None else np.asarray(reference_point, float)
    if ref_point.shape != (m,):
        raise ConfigError("reference_point", f"Give one value per objective ({m}).", problem=f"shape {ref_point.shape}")

    began = time.perf_counter()
    scorer = PairLogProbs(model, getattr(policy, "adapter", None)).eval()
    a_wins, has_label = label_tensors(pairs, objectives)                                  # (N, m) each
    tokenized, pad_id = _tokenized(tokenizer, pairs, max_length), _pad_id(tokenizer)
    if reference_logps is None:
        with policy.reference():
            reference_logps = _logps(scorer, tokenized, pad_id)[0]                        # (2, N)
    if reference_logps.shape != (2, len(pairs)):
        raise ConfigError("reference_logps", "Compute them with reference_logprobs() on the same pairs.",
                          problem=f"shape {tuple(reference_logps.shape)} for {len(pairs)} pairs")
    if reward_models is not None and prompts is None:
        prompts = eval_prompts(pairs)

    accuracy, losses, rewards = np.zeros((len(grid), m)), np.zeros((len(grid), m)), np.zeros((len(grid), m))
    per_pair = np.zeros((len(grid), len(pairs), m))
    per_prompt = np.zeros((len(grid), len(prompts or ()), m))
    bar = lambda items: tqdm(items, desc=f"eval {method}".strip(), disable=not progress, leave=False)  # noqa: E731
    policy_logps = _grid_logps(scorer, policy, grid, tokenized, pad_id, bar)              # (K, 2, N)
    for k, lam in enumerate(grid):
        accuracy[k], losses[k], per_pair[k] = pair_scores(policy_logps[k], reference_logps, a_wins, has_label, beta)
        if reward_models is not None:
            with policy.at(lam.tolist()):
                per_prompt[k] = reply_rewards(model, tokenizer, prompts, reward_models, objectives,
                                              max_new_tokens=max_new_tokens, max_length=max_length,
                                              batch_size=batch_size)                       # (P, m)
            rewards[k] = per_prompt[k].mean(axis=0)
    scored = reward_models is not None
    return FrontResult(method, objectives, grid, accuracy, losses, [int(x) for x in has_label.sum(0)], ref_point,
                       reward=rewards if scored else None, pair_correct=per_pair,
                       prompt_reward=per_prompt if scored else None, seconds=time.perf_counter() - began)


def reference_logprobs(model, tokenizer, policy, eval_pairs, *, max_length: int = 256, max_pairs: int | None = None,
                       batch_size: int = 8) -> torch.Tensor:
    """(2, N) reference log-probs of replies a and b, to share across methods on the same base model
    (``batch_size`` is unused: pairs are scored one at a time, the prompt once for both replies)."""
    from parsona.logprobs import PairLogProbs

    pairs = list(eval_pairs)[:max_pairs]
    with policy.reference():
        return _logps(PairLogProbs(model).eval(), _tokenized(tokenizer, pairs, max_length), _pad_id(tokenizer))[0]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# -- indicators -------------------------------------------------------------------------------

def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ (scipy); NaN when either side is constant (no ranking to agree with)."""
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def indicators(result: FrontResult, reference_front: np.ndarray | None = None) -> dict[str, Any]:
    """HV (with its reference point), sparsity of the non-dominated points, Panacea's inner
    product, Spearman ρ(λ_i, objective i) per objective, and IGD+ if a reference front is given."""
    from parsona.objectives import hypervolume, igd_plus, inner_product, non_dominated, sparsity

    P = result.points                                                    # (K, m)
    front = P[non_dominated(P)]
    out: dict[str, Any] = {
        "metric": result.metric,
        "hypervolume": hypervolume(P, result.reference_point),
        "reference_point": result.reference_point.tolist(),
        "sparsity": sparsity(front),
        "inner_product": inner_product(P, result.preferences),
        "n_points": int(len(P)),
        "n_non_dominated": int(len(front)),
    }
    for i, o in enumerate(result.objectives):
        out[f"spearman_{o}"] = spearman(result.preferences[:, i], P[:, i])
    if reference_front is not None:
        out["igd_plus"] = igd_plus(P, reference_front)
    return out


def union_front(results: Sequence[FrontResult]) -> np.ndarray:
    """The non-dominated points of all methods together (distinct rows): IGD+'s reference front."""
    from parsona.objectives import non_dominated

    metrics = {r.metric for r in results}
    if len(metrics) != 1:
        raise ConfigError("results", "Compare results scored the same way (all rewards or all accuracies).",
                          problem=f"metrics {sorted(metrics)}")
    P = np.unique(np.concatenate([r.points for r in results]), axis=0)  # (n, m)
    return P[non_dominated(P)]


def compare(results: Sequence[FrontResult]) -> list[dict[str, Any]]:
    """One row per method: its indicators, IGD+ against :func:`union_front`, time and budget."""
    refs = {tuple(r.reference_point) for r in results}
    if len(refs) != 1:
        raise ConfigError("reference_point", "Use the same HV reference point for every compared method.",
                          problem=f"got {sorted(refs)}")
    front = union_front(results)
    return [{"method": r.method, **indicators(r, front), "eval_seconds": round(r.seconds, 1), **r.info} for r in results]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width text table of ``columns`` (numbers to 4 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if not np.isfinite(v) else f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return "(" + ", ".join(cell(x) for x in v) + ")"
        return str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
