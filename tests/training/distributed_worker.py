"""One process of tests/training/test_distributed.py: the real recipes on a tiny model and synthetic pairs.

    python distributed_worker.py MODEL_DIR OUT                                    # one process
    python -m torch.distributed.run --nproc_per_node 2 ... distributed_worker.py MODEL_DIR OUT

Trains the preference LoRA (output OUT/preference) and Rewarded Soups (OUT/baselines), then writes
what this process saw to OUT/rank<r>.json (world size, each step's prompts, λ rows and local loss)
and its preference adapter before and after training to OUT/rank<r>.{init,final}.safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from parsona.data.hh_rlhf import MultiObjectivePair
from parsona.recipes import baselines, train_preference_lora
from parsona.training import front_data, preference

STEPS, PAIRS_PER_STEP = 6, 4


def synthetic_pairs(n: int = 16) -> list[MultiObjectivePair]:
    """Distinct prompts labelled for both objectives, the labels mixed so the objectives disagree on some."""
    return [MultiObjectivePair(f"Q{i}: what is {i} plus {i}?", f"It is {2 * i}.", f"Maybe {i * 7 % 5}, or not.",
                               {"helpful": i % 2, "harmless": (i // 2) % 2}) for i in range(n)]


def tensors(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in adapter.state_dict().items()}


def main(model_dir: str, out: Path) -> None:
    front_data.training_pairs = lambda cfg: synthetic_pairs()   # the recipes import these at call time
    front_data.data_fingerprint = lambda: {}
    seen: dict = {"steps": {}}
    real_setup = preference.setup

    def setup(cfg, accelerator=None):                           # keep the run and record what it trains on
        run = real_setup(cfg, accelerator)
        seen.update(run=run, init=tensors(run.adapter), num_processes=run.accelerator.num_processes,
                    process_index=run.accelerator.process_index)
        real_step = run.step

        def step(i: int, pairs=None, history=None):
            out = real_step(i, pairs, history=history)
            seen["steps"][i] = {"prompts": [p.prompt for p in run.batch(i)], "preference": run.preferences(i).tolist(),
                                "loss": out[3]}
            return out

        run.step = step
        return run

    preference.setup = setup
    common = dict(model=model_dir, max_length=48, pairs_per_step=PAIRS_PER_STEP, rank=2, warmup_steps=3)   # a warm-up: the lr schedule must step once a step
    train_preference_lora.main(train_preference_lora.Config(output_dir=str(out / "preference"), max_steps=STEPS,
                                                            checkpoint_every=0, **common))
    baselines.main(baselines.Config(output_dir=str(out / "baselines"), max_steps=4, **common))
    rank = seen["process_index"]
    save_file(seen.pop("init"), str(out / f"rank{rank}.init.safetensors"))
    save_file(tensors(seen.pop("run").adapter), str(out / f"rank{rank}.final.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
