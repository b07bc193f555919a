"""How much does an adapter cost per forward pass? CPU timings of the base model with and without
Parsona's adapters, against PEFT doing the same work.

Measured, for a prefill shape (B × T tokens) and a decode shape (B × 1 token, no KV cache):

  bare            the base model alone
  pref_single     unmerged preference LoRA (rank k, m objectives, all projections), one λ for every row
  pref_mixed      the same, a different λ per row
  peft_r{k+m}     a PEFT LoRA of rank k + m (equal total rank) on the same projections, on a copy
  pref_merged     the preference LoRA merged into the weights (its hooks stay attached)
  bank_one        the LoRA bank, every row under the same user's LoRA (rank r)
  bank_users      the LoRA bank, each row under a different user's LoRA (``--users`` of them)
  peft_users      PEFT's own mixed batch: a PeftModel holding the same LoRAs, ``adapter_names=[...]``

Targets (each checked on both shapes): pref_mixed ≤ 1.02 × pref_single; pref_single ≤ 1.10 × PEFT
LoRA of equal rank; pref_merged ≤ 1.02 × bare; bank_users ≤ 1.3 × bank_one. PEFT's mixed batch is
printed next to ours for comparison, without a target.

Method: every variant runs once per round, in an order that rotates each round, so that load from
other processes on the machine drifts onto all variants alike; the first ``--warmup`` rounds are
discarded; a variant's time is the median over the ``--repeats`` rounds (time.perf_counter, inside
torch.no_grad, garbage collection paused). A ratio is the median over rounds of the per-round ratio
(the two forwards of a round ran seconds apart, under the same load), with its min..max shown as
the noise. Seeds are fixed; torch's thread count is left at its default.

The prefill forward asks for the last position's logits only (``logits_to_keep=1``, as
``generate()`` does for its prefill), so the un-adapted vocabulary projection does not dilute the
ratios; ``--all-logits`` computes them for every position instead.

    .venv/bin/python bench/adapter_overhead.py            # real SmolLM2-135M-Instruct, ~5 min on 2 cores
    .venv/bin/python bench/adapter_overhead.py --tiny     # a tiny random Llama: smoke run in seconds
    .venv/bin/python bench/adapter_overhead.py --profile bank_users   # + a torch.profiler table

Prints a table per shape, the ratios with PASS/FAIL per target, and the command that reproduces the
run; the exit status is 1 when a target fails.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing: `python bench/adapter_overhead.py`
    sys.path.insert(0, str(REPO))

from parsona.errors import ConfigError  # noqa: E402  (after the sys.path line)


@dataclass
class Config:
    """What to measure. Every field is a flag: ``prefill_tokens`` is ``--prefill-tokens``."""

    model: str = ""
    """Hugging Face id or local directory of the base model; empty: the packaged SmolLM2-135M-Instruct."""
    tiny: bool = False
    """Use parsona.base_model.tiny_causal_lm() instead of --model: a smoke run in seconds, timings meaningless."""
    batch: int = 16
    """Rows per forward (B); also the number of rows in the multi-user batch."""
    prefill_tokens: int = 64
    """Tokens per row of the prefill shape (T); 0 skips it."""
    decode: bool = True
    """Also time the decode shape: B × 1 token, no KV cache."""
    all_logits: bool = False
    """Prefill computes logits for every position (default: last position only, as generate() does)."""
    warmup: int = 1
    """Prefill rounds run and discarded before timing."""
    repeats: int = 5
    """Timed prefill rounds; each variant's time is their median."""
    decode_warmup: int = 3
    """Decode rounds run and discarded before timing."""
    decode_repeats: int = 25
    """Timed decode rounds (decode forwards are cheap)."""
    rank: int = 8
    """Preference LoRA rank k; the PEFT reference gets rank k + m."""
    n_objectives: int = 2
    """Preference LoRA objectives m."""
    user_rank: int = 8
    """Rank of each user's LoRA in the multi-user batch."""
    users: int = 16
    """Distinct user LoRAs in the multi-user batch (rows cycle through them when fewer than --batch)."""
    threads: int = 0
    """torch.set_num_threads(N) before timing; 0 leaves torch's default (on a machine shared with other
    jobs, 1 is far less noisy)."""
    seed: int = 0
    """Seed for token ids, preferences and LoRA weights."""
    mixed_target: float = 1.02
    """Target: pref_mixed / pref_single at most this."""
    peft_target: float = 1.10
    """Target: pref_single / PEFT LoRA of rank k+m at most this."""
    merged_target: float = 1.02
    """Target: pref_merged / bare at most this."""
    users_target: float = 1.30
    """Target: bank_users / bank_one at most this."""
    profile: str = ""
    """After timing, profile this variant (e.g. bank_users) with torch.profiler on the prefill shape and
    print the top ops."""

    def __post_init__(self) -> None:
        for name in ("batch", "repeats", "decode_repeats", "rank", "n_objectives", "user_rank", "users"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError("threads", "Use 0 (torch's default) or a positive count.", problem=f"got {self.threads}")
        for name in ("prefill_tokens", "warmup", "decode_warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "Use 0 or more.", problem=f"got {getattr(self, name)}")
        if self.n_objectives < 2:
            raise ConfigError("n_objectives", "Use 2 or more.", problem=f"got {self.n_objectives}")
        if self.prefill_tokens == 0 and not self.decode:
            raise ConfigError("prefill_tokens", "Pass --prefill-tokens > 0 or --decode.", problem="nothing to measure")


from parsona.adapters.base import LLAMA_PROJECTIONS as PROJECTIONS  # noqa: E402  (after the sys.path line)


# -- setup --------------------------------------------------------------------------------------------
def load_model(cfg: Config) -> tuple[torch.nn.Module, str]:
    from parsona.base_model import load_base_model, tiny_causal_lm

    if cfg.tiny:
        return tiny_causal_lm(seed=cfg.seed), "tiny_causal_lm()"
    model, _ = load_base_model(cfg.model or None, device="cpu", dtype=torch.float32)
    return model, cfg.model or "SmolLM2-135M-Instruct (packaged)"


def simplex_rows(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    e = torch.empty(n, m).exponential_(generator=generator)
    return e / e.sum(-1, keepdim=True)


def randomize_preference_lora(pref, seed: int) -> None:
    """σ and s start at 0 (ΔW = 0); give them non-zero values so merge() changes the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in pref.layers.values():
            layer.sigma.copy_(torch.rand(layer.sigma.shape, generator=g))
            layer.pref_scale.fill_(float(torch.rand((), generator=g)))


def build_variants(cfg: Config, base: torch.nn.Module, tmp: Path) -> tuple[dict[str, Callable], dict]:
    """Every model copy and adapter, and for each variant a function ``run(ids, **forward_kwargs)``."""
    import peft

    from parsona.adapters import LoRAConfig, PreferenceLoRAConfig, attach

    g = torch.Generator().manual_seed(cfg.seed)
    k, m, B = cfg.rank, cfg.n_objectives, cfg.batch
    targets = [p for p in PROJECTIONS if any(n.endswith("." + p) for n, _ in base.named_modules())]
    info = {"targets": targets}
    # Copies are taken before anything is attached: a deep copy would share the adapters' hook closures.
    m_pref, m_merged, m_bank, m_peft, m_peft_users = (copy.deepcopy(base) for _ in range(5))

    # 2, 3: unmerged preference LoRA, single and mixed λ.
    pref = attach(m_pref, PreferenceLoRAConfig(rank=k, n_objectives=m, target_modules=targets))
    randomize_preference_lora(pref, cfg.seed)
    lam_single = simplex_rows(1, m, g).expand(B, m).clone()
    lam_mixed = simplex_rows(B, m, g)
    # 5: the same adapter, merged at one λ.
    torch.manual_seed(cfg.seed)
    merged = attach(m_merged, PreferenceLoRAConfig(rank=k, n_objectives=m, target_modules=targets))
    randomize_preference_lora(merged, cfg.seed)
    merged.merge(preference=lam_single[0].tolist())
    # 4: PEFT LoRA of equal total rank k + m.
    torch.manual_seed(cfg.seed)
    peft_rank = peft.get_peft_model(m_peft, peft.LoraConfig(r=k + m, lora_alpha=float(k + m), lora_dropout=0.0,
                                                            target_modules=targets, init_lora_weights=False)).eval()
    # 6, 7: user LoRAs made by PEFT (random non-zero A and B), saved as PEFT dirs, loaded by both.
    names = [f"user{i}" for i in range(cfg.users)]
    user_cfg = peft.LoraConfig(r=cfg.user_rank, lora_alpha=2.0 * cfg.user_rank, lora_dropout=0.0,
                               target_modules=targets, init_lora_weights=False)
    torch.manual_seed(cfg.seed + 1)
    peft_users = peft.get_peft_model(m_peft_users, user_cfg, adapter_name=names[0])
    for name in names[1:]:
        peft_users.add_adapter(name, user_cfg)
    peft_users.eval()
    peft_users.save_pretrained(str(tmp / "users"))
    bank = attach(m_bank, LoRAConfig(rank=cfg.user_rank, target_modules=targets))
    for name in names:
        bank.add(name, tmp / "users" / name)
    rows_users = [names[i % len(names)] for i in range(B)]
    rows_one = [names[0]] * B
    info.update(peft_rank=k + m, users=len(set(rows_users)))

    def pref_run(lam):
        def run(ids, **kw):
            with pref.inputs(preference=lam):
                m_pref(ids, **kw)
        return run

    def bank_run(rows):
        def run(ids, **kw):
            with bank.inputs(adapter=rows):
                m_bank(ids, **kw)
        return run

    variants = {
        "bare": lambda ids, **kw: base(ids, **kw),
        "pref_single": pref_run(lam_single),
        "pref_mixed": pref_run(lam_mixed),
        f"peft_r{k + m}": lambda ids, **kw: peft_rank(input_ids=ids, **kw),
        "pref_merged": lambda ids, **kw: m_merged(ids, **kw),
        "bank_one": bank_run(rows_one),
        "bank_users": bank_run(rows_users),
        "peft_users": lambda ids, **kw: peft_users(input_ids=ids, adapter_names=rows_users, **kw),
    }
    return variants, info


# -- timing -------------------------------------------------------------------------------------------
def time_rounds(variants: dict[str, Callable], ids: torch.Tensor, kw: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward, per variant, one entry per timed round (variants interleaved, order rotated)."""
    order = list(variants)
    times: dict[str, list[float]] = {name: [] for name in order}
    with torch.no_grad():
        for r in range(warmup + repeats):
            gc.collect()
            gc.disable()
            try:
                shift = r % len(order)
                for name in order[shift:] + order[:shift]:
                    t0 = time.perf_counter()
                    variants[name](ids, **kw)
                    dt = time.perf_counter() - t0
                    if r >= warmup:
                        times[name].append(dt)
            finally:
                gc.enable()
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    per_round = [x / y for x, y in zip(times[a], times[b])]
    return statistics.median(per_round), min(per_round), max(per_round)


def spread(xs: list[float]) -> float:
    """Half the inter-quartile range, relative to the median (the run-to-run noise)."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / 2 / statistics.median(xs)
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(xs)


def checks(cfg: Config, peft_name: str) -> list[tuple[str, str, str, float | None]]:
    """(label, numerator, denominator, target or None for information only)."""
    return [
        ("mixed λ / single λ (preference LoRA)", "pref_mixed", "pref_single", cfg.mixed_target),
        (f"pref LoRA unmerged / PEFT LoRA r={peft_name[6:]}", "pref_single", peft_name, cfg.peft_target),
        (f"pref LoRA mixed λ / PEFT LoRA r={peft_name[6:]}", "pref_mixed", peft_name, None),
        ("pref LoRA merged / bare", "pref_merged", "bare", cfg.merged_target),
        ("pref LoRA unmerged / bare", "pref_single", "bare", None),
        (f"{cfg.users} users' LoRAs / one LoRA (bank)", "bank_users", "bank_one", cfg.users_target),
        ("one LoRA (bank) / bare", "bank_one", "bare", None),
        (f"PEFT mixed batch / ours ({cfg.users} users)", "peft_users", "bank_users", None),
        (f"PEFT mixed batch / PEFT one LoRA r={peft_name[6:]}", "peft_users", peft_name, None),
    ]


def report(title: str, times: dict[str, list[float]], cfg: Config, peft_name: str) -> list[tuple[str, bool]]:
    print(f"\n## {title}\n")
    bare = statistics.median(times["bare"])
    print(f"| {'variant':<12} | {'median ms':>10} | {'noise ±':>7} | {'vs bare':>7} |")
    print(f"|{'-' * 14}|{'-' * 12}:|{'-' * 8}:|{'-' * 8}:|")
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"| {name:<12} | {med * 1e3:>10.1f} | {spread(xs) * 100:>6.1f}% | {med / bare:>6.3f}x |")
    print(f"\n| {'check':<44} | {'ratio':>6} | {'min..max':>15} | {'target':>7} | result |")
    print(f"|{'-' * 46}|{'-' * 7}:|{'-' * 16}:|{'-' * 8}:|--------|")
    results = []
    for label, a, b, target in checks(cfg, peft_name):
        ratio, lo, hi = paired_ratio(times, a, b)
        verdict = "" if target is None else ("PASS" if ratio <= target else "FAIL")
        tgt = "" if target is None else f"≤{target:.2f}"
        print(f"| {label:<44} | {ratio:>6.3f} | {lo:>6.3f}..{hi:<7.3f} | {tgt:>7} | {verdict:<6} |")
        if target is not None:
            results.append((f"{title.split(' ')[0]}: {label}", ratio <= target))
    return results


def profile_variant(run: Callable, ids: torch.Tensor, kw: dict, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        run(ids, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(ids, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# -- entry points -------------------------------------------------------------------------------------
def command(cfg: Config) -> str:
    """The exact command line that reproduces ``cfg`` (every field spelled out)."""
    parts = [".venv/bin/python", "bench/adapter_overhead.py"]
    for f in dataclasses.fields(cfg):
        flag, value = "--" + f.name.replace("_", "-"), getattr(cfg, f.name)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def main(cfg: Config) -> bool:
    """Run the benchmark, print the tables and the targets; True when every target passes."""
    import transformers

    transformers.logging.set_verbosity_error()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    base, model_name = load_model(cfg)
    with tempfile.TemporaryDirectory(prefix="parsona-bench-") as tmp:
        variants, info = build_variants(cfg, base, Path(tmp))
    peft_name = f"peft_r{info['peft_rank']}"
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(cfg.seed)
    setup_s = time.perf_counter() - started

    print(f"# Adapter overhead, CPU forward ({model_name}, fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__})")
    print(f"adapted: {', '.join(info['targets'])}; preference LoRA k={cfg.rank}, m={cfg.n_objectives}; "
          f"PEFT reference r={info['peft_rank']}; user LoRAs r={cfg.user_rank}, {info['users']} distinct in a "
          f"batch of {cfg.batch}; setup {setup_s:.0f} s")
    results: list[tuple[str, bool]] = []
    shapes = []
    if cfg.prefill_tokens:
        ids = torch.randint(0, vocab, (cfg.batch, cfg.prefill_tokens), generator=g)
        kw = {"use_cache": False} if cfg.all_logits else {"use_cache": False, "logits_to_keep": 1}
        logits = "all logits" if cfg.all_logits else "last-position logits"
        shapes.append((f"prefill B={cfg.batch} T={cfg.prefill_tokens} ({logits}; median of {cfg.repeats} "
                       f"rounds after {cfg.warmup} warmup)", ids, kw, cfg.warmup, cfg.repeats))
    if cfg.decode:
        ids = torch.randint(0, vocab, (cfg.batch, 1), generator=g)
        shapes.append((f"decode B={cfg.batch} T=1 (no KV cache; median of {cfg.decode_repeats} rounds after "
                       f"{cfg.decode_warmup} warmup)", ids, {"use_cache": False}, cfg.decode_warmup, cfg.decode_repeats))
    for title, ids, kw, warmup, repeats in shapes:
        times = time_rounds(variants, ids, kw, warmup, repeats)
        results += report(title, times, cfg, peft_name)

    if cfg.profile:
        if cfg.profile not in variants:
            raise ConfigError("profile", f"Choose one of {', '.join(variants)}.", problem=f"got {cfg.profile!r}")
        title, ids, kw, *_ = shapes[0]
        print(f"\n## torch.profiler: {cfg.profile}, {title.split(' (')[0]}\n")
        profile_variant(variants[cfg.profile], ids, kw)

    from bench_targets import report as report_targets

    return report_targets(results, time.perf_counter() - started, command(cfg))


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    sys.exit(0 if run_recipe(Config, main) else 1)   # exit status 1 when a target fails
