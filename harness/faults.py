"""Kill points: a test facility that SIGKILLs this process at a named point, to prove a sweep survives kill -9.

    HARNESS_KILL_AT=after_tell python -m harness +sweep=rank        # dies right after the first trial's tell
    HARNESS_KILL_AT=mid_training@3 python -m harness +sweep=rank    # dies the third time training reaches a step

Not for production use: with the variable unset every kill point is a no-op. An unknown point name is an input
error (exit 2), so a typo in a test cannot silently kill nothing. The points are POINTS below (name: where), in
the order a sweep reaches them; tests/test_faults.py kills at each and reruns the same command.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

ENV = "HARNESS_KILL_AT"

POINTS = {
    "during_enqueue": "after the first grid configuration is queued, before the others",
    "after_ask": "a trial was asked (RUNNING in the study), no owner recorded yet",
    "after_pid": "the trial's owner (host, boot id, pid, start time) and trial.json are recorded",
    "mid_training": "after an optimizer step",
    "mid_evaluation": "inside a held-out evaluation (baseline or adapter)",
    "after_results": "results.json written, the study not told",
    "after_tell": "the study told, trial.json still RUNNING",
    "before_trial_json": "tracker closed, trial.json about to be rewritten",
    "during_report": "report.md written, report.html not yet in place",
}

_reached: Counter = Counter()


def check_kill_point() -> None:
    """Refuse an unknown point name in HARNESS_KILL_AT (called once at start-up)."""
    point, nth = _spec()
    if point and (point not in POINTS or not nth.isdigit() or int(nth) < 1):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected <point>[@<n>], n >= 1, point one of {list(POINTS)}")


def kill_point(name: str) -> None:
    """SIGKILL this process if HARNESS_KILL_AT names this point (and this is its n-th time here)."""
    point, nth = _spec()
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _spec() -> tuple[str, str]:
    point, _, nth = os.environ.get(ENV, "").partition("@")
    return point, nth or "1"
