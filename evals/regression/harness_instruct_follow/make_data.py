"""Writes harness_instruct_follow.jsonl: one prompt per (rule, question) pair below.

    python evals/regression/harness_instruct_follow/make_data.py

Deterministic (no randomness): rows are written in the order of RULE_PROMPTS. Each row carries the
rule and its params, which utils.process_results checks against the model's answer. Editing a
prompt or a rule changes the data: bump `metadata.version` in harness_instruct_follow.yaml.
"""

import json
from pathlib import Path

OUT = Path(__file__).with_name("harness_instruct_follow.jsonl")

# rule -> (instruction template, [(question, params), ...]). `{n}` / `{word}` in the template are
# filled from params. Answers are kept short so that a 48-token generation budget suffices.
RULE_PROMPTS: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    "one_word": (
        "Answer with exactly one word and nothing else. {question}",
        [
            ("What color is the sky on a clear day?", {}),
            ("What animal says moo?", {}),
            ("What is the capital of France?", {}),
            ("What do bees make?", {}),
            ("What is frozen water called?", {}),
            ("Which planet do we live on?", {}),
            ("What do you wear on your feet?", {}),
            ("What season comes after winter?", {}),
        ],
    ),
    "uppercase": (
        "Answer in capital letters only, with no lowercase letters. {question}",
        [
            ("What is your favorite fruit?", {}),
            ("Describe the weather on a sunny day in one sentence.", {}),
            ("Name a color of the rainbow.", {}),
            ("What do people drink in the morning?", {}),
            ("Say hello to a friend.", {}),
            ("What is the largest ocean?", {}),
            ("Name an animal that lives in the sea.", {}),
            ("What do you use to write?", {}),
        ],
    ),
    "lowercase": (
        "Answer in lowercase letters only, with no capital letters at all. {question}",
        [
            ("What is the capital of Japan?", {}),
            ("Name a fruit that is yellow.", {}),
            ("Describe a cat in one sentence.", {}),
            ("What do you do when you are tired?", {}),
            ("Name a day of the week.", {}),
            ("What is the opposite of hot?", {}),
            ("Where do fish live?", {}),
            ("What is your favorite season and why? Use one sentence.", {}),
        ],
    ),
    "list_n": (
        "List exactly {n} {question}, one per line, with no other text.",
        [
            ("fruits", {"n": 3}),
            ("colors", {"n": 4}),
            ("animals", {"n": 3}),
            ("countries", {"n": 5}),
            ("vegetables", {"n": 2}),
            ("days of the week", {"n": 3}),
            ("musical instruments", {"n": 4}),
            ("sports", {"n": 2}),
        ],
    ),
    "end_with_word": (
        "{question} Answer in one short sentence and end your answer with the word {word}.",
        [
            ("What is the capital of Italy?", {"word": "DONE"}),
            ("Why do people sleep?", {"word": "DONE"}),
            ("What do cows eat?", {"word": "DONE"}),
            ("What is rain?", {"word": "DONE"}),
            ("Name a big city.", {"word": "END"}),
            ("What do plants need to grow?", {"word": "END"}),
            ("What is a dog?", {"word": "END"}),
            ("Where does the sun rise?", {"word": "END"}),
        ],
    ),
    "start_with_word": (
        "Start your answer with the word {word}. {question}",
        [
            ("What is the capital of Spain?", {"word": "Certainly"}),
            ("Why is the sky blue?", {"word": "Certainly"}),
            ("What do birds eat?", {"word": "Certainly"}),
            ("Name a planet.", {"word": "Certainly"}),
            ("What is water made of?", {"word": "Well"}),
            ("What is a triangle?", {"word": "Well"}),
            ("How do fish breathe?", {"word": "Well"}),
            ("What is a library?", {"word": "Well"}),
        ],
    ),
    "yes_no": (
        "Answer only yes or no, with no other words. {question}",
        [
            ("Is the sun hot?", {}),
            ("Can fish fly like birds?", {}),
            ("Is snow cold?", {}),
            ("Do cats bark?", {}),
            ("Is Paris in France?", {}),
            ("Is the ocean made of sand?", {}),
            ("Do plants need water?", {}),
            ("Is the Moon bigger than the Earth?", {}),
        ],
    ),
    "max_words": (
        "Answer in at most {n} words. {question}",
        [
            ("What is the Moon?", {"n": 5}),
            ("Why do we need water?", {"n": 8}),
            ("What is a computer?", {"n": 6}),
            ("Describe the ocean.", {"n": 5}),
            ("What does a teacher do?", {"n": 8}),
            ("What is gravity?", {"n": 6}),
            ("Why do leaves fall in autumn?", {"n": 10}),
            ("What is a bicycle?", {"n": 5}),
        ],
    ),
    "number_only": (
        "Answer with a number written in digits and nothing else. {question}",
        [
            ("How many legs does a spider have?", {}),
            ("How many days are in a week?", {}),
            ("How many months are in a year?", {}),
            ("How many wheels does a bicycle have?", {}),
            ("How many hours are in a day?", {}),
            ("How many legs does a dog have?", {}),
            ("How many minutes are in an hour?", {}),
            ("How many eyes does a person have?", {}),
        ],
    ),
    "wrap_in_quotes": (
        "Wrap your entire answer in double quotation marks. {question}",
        [
            ("What is the capital of Germany?", {}),
            ("Name a famous painter.", {}),
            ("What is your favorite animal?", {}),
            ("Say good morning.", {}),
            ("What color is grass?", {}),
            ("What do people eat for breakfast?", {}),
            ("Name a musical instrument.", {}),
            ("What is the opposite of day?", {}),
        ],
    ),
}


def main() -> None:
    rows = []
    for rule, (template, questions) in RULE_PROMPTS.items():
        for question, params in questions:
            rows.append(
                {
                    "id": f"if-{len(rows):03d}",
                    "rule": rule,
                    "params": params,
                    "prompt": template.format(question=question, **params),
                }
            )
    prompts = [row["prompt"] for row in rows]
    duplicates = {p for p in prompts if prompts.count(p) > 1}
    if duplicates:
        raise ValueError(f"duplicate prompts: {sorted(duplicates)}")
    with OUT.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} items to {OUT}")


if __name__ == "__main__":
    main()
