"""Held-out eval rows: configurable prompt and gold-answer fields, duplicates, and gold answers checked against
the graders at load time (before any model loads), each error naming the file:line.

    rows = load_eval_rows(cfg.eval)      # rows.examples, rows.warnings, rows.duplicates_removed

A row is `{eval.prompt_field: <string or message list>, eval.reference_field: <gold>}` (default
`{"messages", "reference"}`), or a row in any SFT format (harness.formats) whose last assistant turn is the gold
answer. Policies: an exact duplicate (same prompt, same gold, same split) is removed with a warning naming the
kept copy (in the other split it stays, with a warning that the splits are not independent);
rows without a "split" field are assigned one when eval.split_fraction is set (`assign_splits`, seeded);
the same prompt with two different gold answers is refused; a row with keys beyond the prompt and gold fields is
reported once (a mistyped field name would otherwise be ignored silently).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from harness.config import EvalConfig
from harness.data import DataError, Message, read_jsonl, validate_messages
from harness.graders import grade
from harness.records import DataWarning


@dataclass
class EvalRow:
    messages: list[Message]
    reference: Any
    source: str
    split: str | None = None  # selection or reporting (the row's "split" field)


@dataclass
class EvalRows:
    examples: list[EvalRow]
    path: str
    rows_read: int
    duplicates_removed: int = 0
    warnings: list[DataWarning] = field(default_factory=list)


def load_eval_rows(eval_cfg: EvalConfig) -> EvalRows:
    from harness import formats

    rows = read_jsonl(eval_cfg.data_file)
    parsed, ignored = [], {}
    for where, row in rows:
        messages, reference = _prompt_and_gold(row, where, eval_cfg, formats)
        if messages[-1].role != "user":
            raise DataError(f"{where}: the held-out prompt must end with a user turn, not a {messages[-1].role} turn")
        if not messages[-1].content.strip():
            raise DataError(f"{where}: the held-out prompt's last user turn is empty")
        check_gold(reference, where, eval_cfg)
        if eval_cfg.reference_field in row:
            for key in sorted(set(row) - {eval_cfg.prompt_field, eval_cfg.reference_field, "id", "split"}):
                ignored.setdefault(key, where)
        prompt_key = json.dumps([[m.role, m.content] for m in messages])
        gold_key = json.dumps(reference, sort_keys=True)
        split = row.get("split")
        parsed.append((where, messages, reference, prompt_key, gold_key, split if isinstance(split, str) else None))
        if eval_cfg.split_fraction is not None and "split" in row:
            raise DataError(f"{where}: the row has its own \"split\" while eval.split_fraction="
                            f"{eval_cfg.split_fraction} assigns splits; either every row says its split (set "
                            "eval.split_fraction=null) or none does")
    if eval_cfg.split_fraction is not None:
        assigned = assign_splits([(p[3], p[4]) for p in parsed], eval_cfg.split_fraction, eval_cfg.split_seed)
        parsed = [(*p[:5], split) for p, split in zip(parsed, assigned)]
    examples, seen, warnings, duplicates = [], {}, [], 0
    for where, messages, reference, prompt_key, gold_key, split in parsed:
        if prompt_key in seen:
            first, first_gold, first_split = seen[prompt_key]
            if first_gold != gold_key:
                raise DataError(f"{where}: the same prompt as {first} with a different gold answer "
                                f"({gold_key[:80]} vs {first_gold[:80]}); keep one")
            if first_split == split:
                duplicates += 1
                warnings.append(DataWarning(where, f"duplicate eval row of {first}, removed"))
                continue
            warnings.append(DataWarning(where, f"the same row as {first} is in both the {first_split} and the "
                                               f"{split} split, so they are not independent"))
        else:
            seen[prompt_key] = (where, gold_key, split)
        examples.append(EvalRow(messages, reference, where, split))
    for key, where in ignored.items():
        warnings.append(DataWarning(where, f"field {key!r} is ignored (the prompt is eval.prompt_field="
                                           f"{eval_cfg.prompt_field}, the gold eval.reference_field="
                                           f"{eval_cfg.reference_field})"))
    return EvalRows(examples, str(eval_cfg.data_file), len(rows), duplicates, warnings)


def answer_text(reference: Any) -> str:
    """A gold answer as an assistant turn says it: a string verbatim, anything else as one compact JSON value in
    its own key order (how evals/json_extract/generate.py's answer_json writes the SFT targets)."""
    return reference if isinstance(reference, str) else json.dumps(reference, ensure_ascii=False)


def assign_splits(keys: list[tuple[str, str]], fraction: float, seed: int) -> list[str]:
    """Selection or reporting for each (prompt, gold) key: the distinct keys ranked by sha256(seed, key), the
    first round(fraction x n) of them selection. Deterministic, independent of row order, and copies of a row
    share its split (so they are removed as duplicates, not counted in both splits)."""
    distinct = sorted(set(keys), key=lambda key: hashlib.sha256(json.dumps([seed, *key]).encode()).hexdigest())
    n_selection = round(fraction * len(distinct))
    selection = set(distinct[:n_selection])
    return ["selection" if key in selection else "reporting" for key in keys]


def _prompt_and_gold(row: dict, where: str, eval_cfg: EvalConfig, formats) -> tuple[list[Message], Any]:
    prompt_field, reference_field = eval_cfg.prompt_field, eval_cfg.reference_field
    if reference_field in row:
        if prompt_field not in row:
            raise DataError(f"{where}: missing field {prompt_field!r}, the prompt (found keys: {sorted(row)}); "
                            "set eval.prompt_field")
        prompt = row.get(prompt_field)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{where}: {prompt_field!r} is empty")
            return [Message("user", prompt)], row.get(reference_field)
        return validate_messages(prompt, where, prompt_field, need_assistant=False), row.get(reference_field)
    fmt = formats.row_format(row)
    if fmt is None or (fmt == "messages" and prompt_field == "messages"
                       and not any(isinstance(m, dict) and m.get("role") == "assistant"
                                   for m in (row.get("messages") or []))):
        raise DataError(f"{where}: missing field {reference_field!r}, the gold answer (found keys: {sorted(row)}); name the "
                        f"fields with eval.prompt_field and eval.reference_field, or give rows in a chat format "
                        "whose last assistant turn is the gold answer")
    messages = formats.row_messages(row, where, fmt)
    if messages[-1].role != "assistant":
        raise DataError(f"{where}: no {reference_field!r} field and the conversation does not end with an assistant "
                        "turn to take as the gold answer")
    return messages[:-1], messages[-1].content


def check_gold(reference: Any, where: str, eval_cfg: EvalConfig) -> None:
    """Refuse a gold answer a grader could not score, now rather than after generation."""
    if reference is None:  # an empty string may be a legitimate exact_match answer; graders refuse it otherwise
        raise DataError(f"{where}: the gold answer ({eval_cfg.reference_field!r}) is null")
    for index, grader in enumerate(eval_cfg.graders):
        where_grader = f"eval.graders[{index}] (type {grader.type})"
        if grader.type in ("exact_match", "multiple_choice", "numeric") and isinstance(reference, (dict, list, bool)):
            raise DataError(f"{where}: the gold answer is a {type(reference).__name__} ({json.dumps(reference)[:80]}), "
                            f"which {where_grader} cannot compare with text")
        if grader.type == "json_fields" and isinstance(reference, str):
            try:
                reference_value = json.loads(reference)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: the gold answer is not valid JSON for {where_grader}: {err.msg}") from None
            if not isinstance(reference_value, dict):
                raise DataError(f"{where}: {where_grader} needs a JSON object as the gold answer")
        try:
            grade(grader, "", reference)
        except Exception as err:  # noqa: BLE001 -- the grader's own check of its reference (ValueError, KeyError, TypeError, ...)
            raise DataError(f"{where}: gold answer {json.dumps(reference)[:80]} is not valid for {where_grader}: "
                            f"{err}") from None
