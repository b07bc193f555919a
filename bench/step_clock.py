"""Shared by the benchmarks: one process's step times, CPU share and peak RSS.

Peak RSS is VmHWM (/proc/self/status), which starts fresh at exec; :class:`StepClock` resets it
through /proc/self/clear_refs after set-up, so "train" peak RSS covers the training steps only.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path


def vm_hwm_bytes() -> int:
    """Peak RSS of this process's address space (VmHWM); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class StepClock:
    """Step times, tokens and CPU share; RSS high-water mark reset at the first step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.cpu: list[float] = []
        self.last = time.perf_counter()
        self.last_cpu = cpu_seconds()
        self.setup_hwm = vm_hwm_bytes()
        self.hwm_reset = reset_hwm()

    def start(self) -> None:
        self.last, self.last_cpu = time.perf_counter(), cpu_seconds()

    def step_done(self, n_tokens: int, name: str, total: int) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.times.append(now - self.last)
        self.cpu.append(cpu - self.last_cpu)
        self.tokens.append(n_tokens)
        self.last, self.last_cpu = now, cpu
        print(f"[{name}] step {len(self.times)}/{total}: {self.times[-1]:.2f} s, {n_tokens} tokens, "
              f"RSS peak {vm_hwm_bytes() / 1e9:.2f} GB, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    def result(self, warmup: int, threads: int, **extra) -> dict:
        timed = slice(warmup, None)
        wall, cpu = sum(self.times[timed]), sum(self.cpu[timed])
        train_hwm = vm_hwm_bytes()
        return {"times": self.times, "tokens": self.tokens, "warmup": warmup, "threads": threads,
                "cpu_share": cpu / max(wall, 1e-9) / threads,
                "setup_peak_rss": self.setup_hwm, "train_peak_rss": train_hwm if self.hwm_reset else None,
                "peak_rss": max(self.setup_hwm, train_hwm), "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                **extra}
