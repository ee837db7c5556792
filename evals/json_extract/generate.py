"""Generate the default task's data: "extract name, age, city and job as JSON" from one sentence.

Deterministic (seeded) and committed: rerunning writes byte-identical files, and
`python evals/json_extract/generate.py --check` fails if the committed files differ from a fresh run.

Files written beside this script:
  sft_train.jsonl  {"messages": [user, assistant]}                    SFT data (training pools)
  dpo_train.jsonl  {"prompt": [user], "chosen": [...], "rejected": [...]} preference data (training pools)
  heldout.jsonl    {"messages": [user], "reference": {...}, "split": "selection" | "reporting"}
                   the held-out eval set (held-out pools): the first N_SELECTION rows are the selection split
                   (sweep objective, pruning, "best"), the other N_REPORTING the reporting split (verdicts, the
                   CI gate), which no selection touches.

  preference_pool.jsonl  {"messages": [user], "reference": {...}}
                   prompts for on-policy preference pairs (python -m harness.pairs mine --adapter DIR
                   --out FILE; data.mining.pool_file names this file): the SFT policy's wrong answers here become
                   the rejected side of DPO pairs.

First names, last names and cities come from disjoint pools for training and held-out, so an adapter
cannot score on the held-out set by memorising entities it saw in training. Both held-out splits draw from
the held-out pools (their rows are distinct examples; names may recur across them, never in training).
The preference pool has pools of its own, disjoint from both and less like the training entities (longer,
rarer, some accented names and cities), where an SFT policy makes the copying mistakes it makes on held-out
entities; it draws from its own random stream (POOL_SEED) after the other files, so adding it changed none of
them (heldout.jsonl and its manifest hash included). Regenerate everything with
`python evals/json_extract/generate.py` (`--check` compares instead of writing).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
N_SFT = 400
N_DPO = 160
# The selection split is the first 100 held-out rows, the examples the rank sweep selected on before the split
# existed; the reporting split is larger, because its verdicts need the narrower interval.
N_SELECTION = 100
N_REPORTING = 160
N_HELDOUT = N_SELECTION + N_REPORTING

INSTRUCTION = (
    "Extract the person's name, age, city and job from the text. "
    'Reply with only a JSON object with the keys "name", "age", "city" and "job".'
)

TRAIN_FIRST = """Maria Tom Anna Lukas Sofia David Elena Jonas Clara Peter Nina Omar Laura Felix Irene Victor
Hannah Marco Julia Samuel Rosa Adrian Lea Hugo Alice Ivan Paula Oscar Emma Diego Mila Ruben""".split()
TRAIN_LAST = """Lopez Becker Novak Silva Berg Costa Weber Rossi Keller Moreau Jansen Dubois Fischer Lindqvist
Horvat Marin Kowalski Petrov Almeida Brandt""".split()
TRAIN_CITIES = """Lisbon Oslo Prague Vienna Dublin Porto Lyon Krakow Seville Bergen Antwerp Turin Gdansk
Tallinn Zagreb Malaga Leipzig Bilbao""".split()

HELDOUT_FIRST = """Sarah James Olga Pablo Greta Leon Chiara Mateo Ingrid Tariq Yara Stefan Alma Kenji Dalia
Boris Freya Nikos Lucia Arjun Vera Emil Rania Tobias""".split()
HELDOUT_LAST = """Andersen Ferreira Nowak Schmidt Romano Eriksen Haddad Castillo Varga Okafor Tanaka Meyer
Santos Ivanova Lund Moretti""".split()
HELDOUT_CITIES = """Madrid Berlin Helsinki Athens Warsaw Budapest Naples Geneva Riga Marseille Rotterdam
Valencia Munich Bruges Cork Salzburg""".split()

POOL_SEED = 5678
N_POOL = 240
POOL_FIRST = """Aurelio Bogdana Cosimo Dagny Eulalia Fintan Gwendolyn Hamish Ilaria Jarosław Katalin Lorcan Marisol
Niamh Octavian Perpetua Quirin Radomir Saoirse Thibault Ulrike Wendelin Ximena Zdeněk Ottilie Benedikt""".split()
POOL_LAST = """Abernathy Brzezinski Castellanos Dąbrowski Etxeberria Fitzgerald Gallagher Hämäläinen Iglesias
Jovanović Kristiansen Lombardi Montgomery Nakamura Oyelaran Papadopoulos Quiroga Rautenberg""".split()
POOL_CITIES = """Ljubljana Thessaloniki Szczecin Reykjavik Bratislava Clermont-Ferrand Düsseldorf Tampere Coimbra
Plovdiv Trondheim Eindhoven Bydgoszcz Innsbruck Timișoara Galway""".split()

JOBS = """nurse carpenter teacher pilot chef electrician architect baker pharmacist journalist plumber
librarian dentist engineer photographer translator mechanic gardener accountant veterinarian""".split()

# One templated sentence per example; the templates vary word order so the model must read, not count.
TEMPLATES = [
    "{name}, {age}, works as {a_job} in {city}.",
    "Meet {name} from {city}: {age} years old and {a_job} by trade.",
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "In {city}, {name} ({age}) has been working as {a_job} for years.",
    "Our new {job}, {name}, is {age} and just moved to {city}.",
    "{name} ({job}, age {age}) was born and raised in {city}.",
]


def _person(rng: random.Random, firsts: list[str], lasts: list[str], cities: list[str]) -> dict:
    return {
        "name": f"{rng.choice(firsts)} {rng.choice(lasts)}",
        "age": rng.randint(19, 78),
        "city": rng.choice(cities),
        "job": rng.choice(JOBS),
    }


def _sentence(rng: random.Random, person: dict) -> str:
    article = "an" if person["job"][0] in "aeiou" else "a"
    text = rng.choice(TEMPLATES).format(a_job=f"{article} {person['job']}", **person)
    return text[0].upper() + text[1:]


def _user_message(sentence: str) -> dict:
    return {"role": "user", "content": f"{INSTRUCTION}\n\nText: {sentence}"}


def answer_json(person: dict) -> str:
    """The target output: one compact JSON object, keys in a fixed order."""
    return json.dumps({k: person[k] for k in ("name", "age", "city", "job")}, ensure_ascii=False)


def _rejected_answers(rng: random.Random, person: dict) -> list[str]:
    """Realistic failures of a half-trained model, each one a thing DPO should teach it to avoid."""
    correct = answer_json(person)
    wrong_value = dict(person, age=person["age"] + rng.choice([-3, -1, 1, 2, 10]))
    wrong_keys = {"Name": person["name"], "Age": person["age"], "City": person["city"], "Job": person["job"]}
    missing = {k: person[k] for k in ("name", "age", "city")}
    string_age = dict(person, age=str(person["age"]))
    return [
        f"Here is the extracted information:\n{correct}",
        f"```json\n{correct}\n```",
        json.dumps(wrong_keys, ensure_ascii=False),
        answer_json(wrong_value),
        json.dumps(missing, ensure_ascii=False),
        json.dumps(string_age, ensure_ascii=False),
        f"{correct}\nLet me know if you need anything else!",
    ]


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    sft, dpo, heldout = [], [], []
    for _ in range(N_SFT):
        person = _person(rng, TRAIN_FIRST, TRAIN_LAST, TRAIN_CITIES)
        user = _user_message(_sentence(rng, person))
        sft.append({"messages": [user, {"role": "assistant", "content": answer_json(person)}]})
    for _ in range(N_DPO):
        person = _person(rng, TRAIN_FIRST, TRAIN_LAST, TRAIN_CITIES)
        user = _user_message(_sentence(rng, person))
        dpo.append(
            {
                "prompt": [user],
                "chosen": [{"role": "assistant", "content": answer_json(person)}],
                "rejected": [{"role": "assistant", "content": rng.choice(_rejected_answers(rng, person))}],
            }
        )
    for index in range(N_HELDOUT):
        person = _person(rng, HELDOUT_FIRST, HELDOUT_LAST, HELDOUT_CITIES)
        split = "selection" if index < N_SELECTION else "reporting"
        heldout.append({"messages": [_user_message(_sentence(rng, person))], "reference": person, "split": split})
    pool_rng = random.Random(POOL_SEED)  # a stream of its own: the files above do not depend on the pool
    pool = []
    for _ in range(N_POOL):
        person = _person(pool_rng, POOL_FIRST, POOL_LAST, POOL_CITIES)
        pool.append({"messages": [_user_message(_sentence(pool_rng, person))], "reference": person})
    return {"sft_train.jsonl": sft, "dpo_train.jsonl": dpo, "heldout.jsonl": heldout,
            "preference_pool.jsonl": pool}


def _render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files differ from a fresh run")
    args = parser.parse_args(argv)
    stale = []
    for filename, rows in build().items():
        path = HERE / filename
        text = _render(rows)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(rows)} rows)")
    if stale:
        print(f"stale or missing: {', '.join(stale)}; rerun python {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
