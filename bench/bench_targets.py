"""How every benchmark ends: PASS/FAIL per target, the time, the machine's load, the command to rerun."""

from __future__ import annotations

import os


def report(checks: list[tuple[str, bool]], seconds: float, command: str) -> bool:
    """Print the targets and the reproducing command; True when every target passed (exit status 0)."""
    print("\n## Targets\n")
    if not checks:
        print("none checked")
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal {seconds:.0f} s; load average now {load} (1/5/15 min: 2 shared cores are noisy). "
          f"Reproduce with:\n  {command}")
    return all(ok for _, ok in checks)
