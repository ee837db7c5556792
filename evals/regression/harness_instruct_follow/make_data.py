"""Writes harness_instruct_follow.jsonl: one prompt per (rule, question) pair below.

    python evals/regression/harness_instruct_follow/make_data.py

Deterministic (no randomness): rows are written in the order of RULE_PROMPTS. Each row carries the
rule and its params, which utils.process_results checks against the model's answer. Editing a
prompt or a rule changes the data: bump `metadata.version` in harness_instruct_follow.yaml.
"""

import json
from pathlib import Path

OUT = Path(__file__).with_name("harness_instruct_follow.jsonl")

# rule -> (instruction template, [(question, params), ...]). `{n}` / `{word}` / `{text}` in the template
# are filled from params. Answers are short, so a 48-token generation budget suffices.
RULE_PROMPTS: dict[str, tuple[str, list[tuple[str, dict]]]] = {
    # Rules SmolLM2-135M-Instruct mostly obeys: a drop here is forgetting of basic instruction following.
    "yes_no_start": (
        "{question} Start your answer with yes or no.",
        [
            ("Is the sun hot?", {}),
            ("Do cats bark?", {}),
            ("Is snow cold?", {}),
            ("Can fish fly like birds?", {}),
            ("Is Paris in France?", {}),
            ("Do plants need water?", {}),
            ("Is the Moon bigger than the Earth?", {}),
            ("Is the ocean made of sand?", {}),
        ],
    ),
    "list_n": (
        "Give a numbered list of exactly {n} {question}.",
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
    "one_sentence": (
        "{question} Answer in one sentence.",
        [
            ("What is the Moon?", {}),
            ("What is a dog?", {}),
            ("What do cows eat?", {}),
            ("Why do people sleep?", {}),
            ("What is a library?", {}),
            ("What does a teacher do?", {}),
            ("What is rain?", {}),
            ("What is a bicycle?", {}),
        ],
    ),
    "max_words": (
        "{question} Answer in at most {n} words.",
        [
            ("What is water made of?", {"n": 20}),
            ("What is a computer?", {"n": 20}),
            ("Why do we need water?", {"n": 20}),
            ("What is gravity?", {"n": 25}),
            ("Describe the ocean.", {"n": 25}),
            ("What is a triangle?", {"n": 15}),
            ("Where does the sun rise?", {"n": 15}),
            ("What do birds eat?", {"n": 15}),
        ],
    ),
    "include_word": (
        'Write a sentence that contains the word "{word}".',
        [
            ("", {"word": "blue"}),
            ("", {"word": "river"}),
            ("", {"word": "happy"}),
            ("", {"word": "bread"}),
            ("", {"word": "window"}),
            ("", {"word": "music"}),
            ("", {"word": "garden"}),
            ("", {"word": "winter"}),
        ],
    ),
    "repeat_exact": (
        "Repeat this sentence exactly: {text}",
        [
            ("", {"text": "The cat sat on the mat."}),
            ("", {"text": "I like to read books in the evening."}),
            ("", {"text": "The train leaves at noon."}),
            ("", {"text": "Birds sing in the morning."}),
            ("", {"text": "My brother has a red bicycle."}),
            ("", {"text": "We planted tomatoes in the garden."}),
            ("", {"text": "The library opens on Monday."}),
            ("", {"text": "Please close the door quietly."}),
        ],
    ),
    # Rules it rarely obeys: headroom, so that an adapter that improves instruction following shows.
    "one_word": (
        "Answer with exactly one word and nothing else. {question}",
        [
            ("What color is the sky on a clear day?", {}),
            ("What is the capital of France?", {}),
            ("What do bees make?", {}),
            ("What is frozen water called?", {}),
        ],
    ),
    "uppercase": (
        "Answer in capital letters only, with no lowercase letters. {question}",
        [
            ("What is your favorite fruit?", {}),
            ("Name a color of the rainbow.", {}),
            ("What is the largest ocean?", {}),
            ("Say hello to a friend.", {}),
        ],
    ),
    "lowercase": (
        "Answer in lowercase letters only, with no capital letters at all. {question}",
        [
            ("What is the capital of Japan?", {}),
            ("Name a fruit that is yellow.", {}),
            ("Where do fish live?", {}),
            ("What is the opposite of hot?", {}),
        ],
    ),
    "end_with_word": (
        "{question} Answer in one short sentence and end your answer with the word {word}.",
        [
            ("What is the capital of Italy?", {"word": "DONE"}),
            ("What do plants need to grow?", {"word": "DONE"}),
            ("Name a big city.", {"word": "END"}),
            ("Where does the sun set?", {"word": "END"}),
        ],
    ),
    "start_with_word": (
        "Start your answer with the word {word}. {question}",
        [
            ("What is the capital of Spain?", {"word": "Certainly"}),
            ("Name a planet.", {"word": "Certainly"}),
            ("How do fish breathe?", {"word": "Well"}),
            ("What is a museum?", {"word": "Well"}),
        ],
    ),
    "yes_no": (
        "Answer only yes or no, with no other words. {question}",
        [
            ("Is fire hot?", {}),
            ("Do dogs have four legs?", {}),
            ("Is ice warm?", {}),
            ("Can a car fly?", {}),
        ],
    ),
    "number_only": (
        "Answer with a number written in digits and nothing else. {question}",
        [
            ("How many legs does a spider have?", {}),
            ("How many days are in a week?", {}),
            ("How many months are in a year?", {}),
            ("How many wheels does a bicycle have?", {}),
        ],
    ),
    "wrap_in_quotes": (
        "Wrap your entire answer in double quotation marks. {question}",
        [
            ("What is the capital of Germany?", {}),
            ("Name a famous painter.", {}),
            ("What color is grass?", {}),
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
