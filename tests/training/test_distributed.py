"""Many processes, for real: two gloo processes train exactly what one process trains.

The recipes run under ``torchrun`` on a tiny random Llama (distributed_worker.py beside this file);
each process must train its own half of every step's global batch, and DDP's gradient average must
make the step the one-process step: the same adapter (to float rounding), the same loss history.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parsona.errors import ConfigError
from parsona.training import base
from parsona.training.sampling import local_rows

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model_dir: str, out: Path, processes: int) -> list[dict]:
    """Run the worker in ``processes`` processes (1: plain python, no launcher); what each rank saw."""
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd = [*(torchrun if processes > 1 else [sys.executable]), str(WORKER), model_dir, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PARSONA_CACHE": str(out / "cache")}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    return {n: (launch(tiny_dir, tmp / f"w{n}", n), tmp / f"w{n}") for n in (1, 2)}


def summary(out: Path) -> dict:
    return json.loads((out / "preference" / "adapter" / "training_summary.json").read_text())


def test_two_processes_really_ran_and_split_every_step(runs):
    (one,), _ = runs[1]
    two, _ = runs[2]
    assert one["num_processes"] == 1                     # a silent single process would pass everything below
    assert [r["num_processes"] for r in two] == [2, 2] and [r["process_index"] for r in two] == [0, 1]
    for step, whole in one["steps"].items():
        first, second = two[0]["steps"][step], two[1]["steps"][step]
        assert len(first["prompts"]) == len(second["prompts"]) == 2
        assert not set(first["prompts"]) & set(second["prompts"])           # each pair trained once, not twice
        assert first["prompts"] + second["prompts"] == whole["prompts"]     # contiguous halves, in order
        assert first["preference"] + second["preference"] == whole["preference"]   # λ stays with its pair
        # different pairs, different local losses (after step 0, where every loss is ln 2: policy = reference):
        # only the gradient average keeps the ranks' weights equal
        assert step == "0" or abs(first["loss"] - second["loss"]) > 1e-4


def test_two_processes_end_with_the_one_process_adapter_and_losses(runs):
    _, out1 = runs[1]
    two, out2 = runs[2]
    single = load_file(out1 / "rank0.final.safetensors")
    init = load_file(out1 / "rank0.init.safetensors")
    assert max((single[k] - init[k]).abs().max().item() for k in single) > 1e-3     # training moved it
    for rank in (0, 1):
        got = load_file(out2 / f"rank{rank}.final.safetensors")
        assert got.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(got[key], single[key], rtol=0, atol=1e-6)
    saved = load_file(out2 / "preference" / "adapter" / "adapter.safetensors")        # what the recipe wrote
    ref = load_file(out1 / "preference" / "adapter" / "adapter.safetensors")
    for key in ref:
        torch.testing.assert_close(saved[key], ref[key], rtol=0, atol=1e-6)

    a, b = summary(out1), summary(out2)
    assert b["tokens"] == a["tokens"] > 0                # the global batch's tokens, not one rank's (nor twice)
    assert len(b["history"]) == len(a["history"]) == 6
    for got, want in zip(b["history"], a["history"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    for step, row in enumerate(b["history"]):            # the logged loss is the mean of the two shares'
        assert row["loss"] == pytest.approx((two[0]["steps"][str(step)]["loss"] + two[1]["steps"][str(step)]["loss"]) / 2)


def test_baselines_split_the_batch_and_average_gradients(runs):
    _, out1 = runs[1]
    _, out2 = runs[2]
    fronts = [json.loads((out / "baselines" / "rewarded_soups" / "front.json").read_text()) for out in (out1, out2)]
    assert fronts[1]["total_tokens"] == fronts[0]["total_tokens"] > 0
    for name in ("helpful", "harmless"):
        want, got = (load_file(out / "baselines" / "rewarded_soups" / name / "adapter_model.safetensors")
                     for out in (out1, out2))
        assert any(v.abs().max() > 1e-4 for k, v in want.items() if "lora_B" in k)     # B starts at 0: it trained
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


def test_local_rows_are_contiguous_equal_shares_and_refuse_an_uneven_split():
    assert [local_rows(8, r, 4) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert local_rows(4, 0, 1) == slice(0, 4)
    with pytest.raises(ConfigError) as err:
        local_rows(6, 0, 4)
    assert err.value.field == "pairs_per_step" and "4 processes" in str(err.value)


def test_the_launch_configs_precision_is_kept_and_one_the_device_cannot_run_warns(monkeypatch):
    from parsona.devices import mixed_precision

    monkeypatch.delenv(base.LAUNCH_PRECISION, raising=False)
    assert base.training_precision() == mixed_precision()                 # nothing set: the device's default
    monkeypatch.setenv(base.LAUNCH_PRECISION, "bf16")                     # CPU autocasts bf16; CUDA may
    monkeypatch.setattr(base, "runnable_precisions", lambda: {"no", "bf16"})
    assert base.training_precision() == "bf16"
    monkeypatch.setenv(base.LAUNCH_PRECISION, "no")                       # "no" is a choice, not "unset"
    assert base.training_precision() == "no"
    monkeypatch.setenv(base.LAUNCH_PRECISION, "fp16")
    with pytest.warns(UserWarning, match="ACCELERATE_MIXED_PRECISION=fp16"):
        assert base.training_precision() == mixed_precision()
