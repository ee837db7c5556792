"""Scorer of the spot_check test task: random checks drawn from Python's global RNG, as some lm-eval scorers do."""

import random

# Some scorer libraries draw at import time; lm-eval imports the task's code after it seeds, so this draw shifts
# every later one in lm-eval's own CLI. A harness that imports the task before seeding scores other random checks.
_IMPORT_DRAW = random.random()


def process_results(doc, results):
    response = results[0]
    probe = random.random()
    word = random.choice(doc["answer"].split())  # spot-check one random word of the reference
    threshold = random.randint(1, 6)  # and a random minimum length, as ifeval's open "at least N words"
    return {
        "spot_check": float(word.lower() in response.lower()),
        "min_words": float(len(response.split()) >= threshold),
        "rng_probe": probe,
    }
