"""Scorer of the needs_missing test task: never imported by a correct pre-flight check (it would print)."""

import nltk

from scorer_helpers import check

print("Downloaded harness_missing_resource")  # what a misleading download message looks like


def process_results(doc, results):
    nltk.data.find("tokenizers/harness_missing_resource")
    return {"ok": check(results[0])}
