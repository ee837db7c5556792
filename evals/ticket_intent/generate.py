"""Generate the ticket-intent task's data: classify a customer-support message into one of five intent labels.

The second built-in task, of a different kind than json_extract (a label, not structured output), and the
template to copy for your own task (README, "Use your own task"). Deterministic (seeded) and committed:
rerunning writes byte-identical files, and `python evals/ticket_intent/generate.py --check` fails if the
committed files differ from a fresh run.

Files written beside this script:
  sft_train.jsonl  {"messages": [user, assistant]}                          SFT data (training templates)
  dpo_train.jsonl  {"prompt": [user], "chosen": [...], "rejected": [...]}   preference data (training templates)
  heldout.jsonl    {"id", "prompt", "label"}                                the eval rows, in a user's own field
                   names and without a "split" field: `python -m harness.evalset create` assigns the
                   selection/reporting splits (seeded) and writes conf/eval/ticket_intent.yaml and the manifest.

Held-out messages come from their own sentence templates and their own products, names and order numbers, so an
adapter cannot score by recognising sentences it saw in training (the leakage check passes);
`_check_disjoint` fails the script if a training and a held-out template share an opening word or five words.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 4321
N_SFT = 300
N_DPO = 100
N_HELDOUT = 200

LABELS = ("billing", "shipping", "technical", "account", "cancellation")
INSTRUCTION = (
    "Classify the customer message into exactly one intent: billing, shipping, technical, account or "
    "cancellation. Reply with the label only, in lowercase."
)

TRAIN_PRODUCTS = """Aurora blender|Nimbus headphones|Vega desk lamp|Orion backpack|Luma smart plug|Terra water bottle
|Pico coffee grinder|Atlas office chair|Breeze fan|Cobalt keyboard""".replace("\n", "").split("|")
HELDOUT_PRODUCTS = """Zephyr kettle|Quasar speaker|Ember heater|Delta router|Solstice yoga mat|Marble phone case
|Harbor rain jacket|Falcon drone""".replace("\n", "").split("|")
TRAIN_NAMES = "Maria Tom Anna Lukas Sofia David Elena Jonas".split()
HELDOUT_NAMES = "Greta Kenji Dalia Boris Freya Nikos".split()

# {product}, {amount}, {days}, {order}, {customer}, {name}: filled per example from the pools of the example's side.
TRAIN_TEMPLATES = {
    "billing": [
        "I was charged {amount} twice for my {product} order {order}.",
        "My invoice for order {order} shows {amount} but the {product} was on sale.",
        "Why did my card get billed {amount} when I paid with voucher {order}?",
        "Please explain the extra fee of {amount} on statement {order}.",
        "The payment for the {product} went through but I still got a reminder to pay {amount}.",
    ],
    "shipping": [
        "My {product} from order {order} still has not arrived after {days} days.",
        "Where is my package? The tracking for order {order} has not moved in {days} days.",
        "The courier left my {product} from order {order} at the wrong address.",
        "Can I change the delivery address for order {order} before it ships?",
        "The box with my {product} arrived crushed and the tracking says delivered {days} days late.",
    ],
    "technical": [
        "My {product} stops working after about {days} minutes of use.",
        "The app keeps crashing when I try to pair my {product}, customer number {customer}.",
        "I updated the firmware and now the {product} will not turn on.",
        "The {product} makes a loud buzzing noise and the light blinks red.",
        "Pairing fails with error code {days} every time I set up the {product}.",
    ],
    "account": [
        "I cannot log in to account {customer}, the password reset email never arrives.",
        "Please update the email address on my account {customer}, this is {name}.",
        "My account {customer} got locked after I typed the wrong code {days} times.",
        "I want to merge my two accounts into one, my name is {name} and my number is {customer}.",
        "Someone changed the phone number on profile {customer} without asking me.",
    ],
    "cancellation": [
        "I want to cancel subscription {customer} before the next renewal in {days} days.",
        "Please cancel order {order}, I ordered the {product} by mistake.",
        "Stop the monthly plan on account {customer}, I no longer need it.",
        "Cancel the {product} from order {order} and refund the {amount}.",
        "End my membership {customer} today, my name is {name}.",
    ],
}
HELDOUT_TEMPLATES = {
    "billing": [
        "Hello, the receipt for {order} lists {amount} although the checkout page said less.",
        "Quick question: what is this recurring charge of {amount} on customer file {customer}?",
        "Good morning, a refund of {amount} was promised yet my bank shows nothing.",
        "Hey there, your shop debited {amount} for a {product} that I returned, reference {order}.",
    ],
    "shipping": [
        "Hello, order {order} was meant to come {days} days ago and nothing is here yet.",
        "Quick question: does the {product} in order {order} ship to an island address?",
        "Good morning, the parcel tracker shows my {product} stuck in customs for {days} days.",
        "Hey there, a neighbour received my {product} instead of me, order {order}.",
    ],
    "technical": [
        "Hello, the {product} shows a blank screen once it is plugged in, serial {customer}.",
        "Quick question: how do I fix the {product} overheating after {days} minutes?",
        "Good morning, the {product} disconnects from wifi every {days} minutes.",
        "Hey there, my {product} refuses to charge with the supplied cable, serial {customer}.",
    ],
    "account": [
        "Hello, {name} here, two factor codes for client {customer} are not reaching my phone.",
        "Quick question: can I rename the username on client profile {customer}?",
        "Good morning, my login for client {customer} says the email is unknown even though I signed up.",
        "Hey there, please delete the old address saved under {name}, client {customer}.",
    ],
    "cancellation": [
        "Hello, kindly terminate plan {customer} effective at the end of this month.",
        "Quick question: may I undo order {order} for the {product} today?",
        "Good morning, {name} wishes to quit the premium tier of client {customer} right away.",
        "Hey there, drop my pending order {order}, I found the {product} elsewhere.",
    ],
}


def _fill(rng: random.Random, template: str, products: list[str], names: list[str], numbers: range) -> str:
    return template.format(
        product=rng.choice(products), name=rng.choice(names), order=f"#{rng.choice(numbers)}",
        customer=f"C-{rng.choice(numbers)}",
        amount=f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}", days=rng.randint(2, 30),
    )


def _user_message(text: str) -> dict:
    return {"role": "user", "content": f"{INSTRUCTION}\n\nMessage: {text}"}


def _rejected(rng: random.Random, label: str) -> str:
    """A half-trained model's failures: a wrong label, or the right one wrapped in prose."""
    wrong = rng.choice([other for other in LABELS if other != label])
    return rng.choice([wrong, f"The intent of this message is {label}.", f"{label.capitalize()}!",
                       f"{label}\n\nLet me know if there is anything else I can help with."])


def build() -> dict[str, list[dict]]:
    _check_disjoint()
    rng = random.Random(SEED)
    train_orders, heldout_orders = range(10000, 50000), range(60000, 99999)

    seen: set[str] = set()

    def train_example() -> tuple[dict, str]:
        while True:  # one copy of each message across SFT and DPO (the harness would remove duplicates)
            label = rng.choice(LABELS)
            text = _fill(rng, rng.choice(TRAIN_TEMPLATES[label]), TRAIN_PRODUCTS, TRAIN_NAMES, train_orders)
            if text not in seen:
                seen.add(text)
                return _user_message(text), label

    sft = []
    for _ in range(N_SFT):
        user, label = train_example()
        sft.append({"messages": [user, {"role": "assistant", "content": label}]})
    dpo = []
    for _ in range(N_DPO):
        user, label = train_example()
        dpo.append({"prompt": [user], "chosen": [{"role": "assistant", "content": label}],
                    "rejected": [{"role": "assistant", "content": _rejected(rng, label)}]})
    heldout = []
    for index in range(N_HELDOUT):
        label = LABELS[index % len(LABELS)]  # balanced labels
        text = _fill(rng, rng.choice(HELDOUT_TEMPLATES[label]), HELDOUT_PRODUCTS, HELDOUT_NAMES, heldout_orders)
        heldout.append({"id": f"ti-{len(heldout) + 1:04d}", "prompt": _user_message(text)["content"], "label": label})
    return {"sft_train.jsonl": sft, "dpo_train.jsonl": dpo, "heldout.jsonl": heldout}


def _words(template: str) -> list[str]:
    return re.sub(r"\{\w+\}", " ", template.lower()).replace(",", " ").split()


def _check_disjoint() -> None:
    """No opening word and no 5-word sequence of a held-out template occurs in a training template."""
    train = [_words(t) for ts in TRAIN_TEMPLATES.values() for t in ts]
    heldout = [_words(t) for ts in HELDOUT_TEMPLATES.values() for t in ts]
    grams = {tuple(w[i:i + 5]) for w in train for i in range(len(w) - 4)}
    openings = {w[0] for w in train}
    for words in heldout:
        shared = [g for g in (tuple(words[i:i + 5]) for i in range(len(words) - 4)) if g in grams]
        if words[0] in openings or shared:
            raise SystemExit(f"held-out template {' '.join(words)!r} overlaps training: {shared or words[0]}")


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
