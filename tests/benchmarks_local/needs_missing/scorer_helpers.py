"""A local helper module of the needs_missing task: its imports are task requirements too."""

import harness_no_such_module  # noqa: F401


def check(response):
    return float(bool(response))
