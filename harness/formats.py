"""The JSONL row formats users bring, detected or chosen with `data.format`, converted to typed messages.

    fmt = detect_format(rows, data.format)            # "messages", "sharegpt", "alpaca", "prompt_completion"
    messages = row_messages(row, where, fmt)           # DataError naming file:line and the field

SFT formats (one per file; the first row decides when `data.format=auto`, and every later row must match):
- `messages`: `{"messages": [{"role", "content"}, ...]}` (OpenAI / Hugging Face chat);
- `sharegpt`: `{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}`;
- `alpaca`: `{"instruction", "input" (optional), "output"}`; the user turn is the instruction, then a blank line
  and the input when it is not empty; an optional `system` string becomes the system turn;
- `prompt_completion`: `{"prompt", "completion"}`, both strings (one user and one assistant turn) or both message
  lists (trl's conversational prompt-completion form).
Preference rows (DPO) are trl's: `{"prompt", "chosen", "rejected"}` as strings or message lists, or the implicit
prompt form `{"chosen": [...], "rejected": [...]}` whose shared leading turns are the prompt.
"""

from __future__ import annotations

from harness.data import DataError, Message, validate_messages

SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
# The keys that identify each format; the first format whose keys a row has wins.
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
# Optional keys each format reads; anything else in a row is reported once as ignored.
FORMAT_OPTIONAL = {"alpaca": ("input", "system", "text"), "sharegpt": ("system", "id"), "messages": ("id",),
                   "prompt_completion": ("id",)}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
}


def row_format(row: dict) -> str | None:
    """The SFT format a row's keys identify, or None."""
    return next((name for name, keys in FORMAT_KEYS.items() if all(key in row for key in keys)), None)


def detect_format(where: str, row: dict, configured: str) -> str:
    """The file's format: `configured` unless it is "auto", else what the first row's keys identify."""
    if configured != "auto":
        return configured
    found = row_format(row)
    if found is None:
        expected = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in FORMAT_KEYS.items())
        raise DataError(f"{where}: cannot tell the row format from its keys {sorted(row)} (expected {expected}); "
                        "set data.format")
    return found


def ignored_keys(row: dict, fmt: str) -> list[str]:
    known = set(FORMAT_KEYS[fmt]) | set(FORMAT_OPTIONAL.get(fmt, ()))
    return sorted(key for key in row if key not in known)


def row_messages(row: dict, where: str, fmt: str) -> list[Message]:
    """One SFT row in format `fmt` as messages; DataError naming the file:line and the field on a bad row."""
    missing = [key for key in FORMAT_KEYS[fmt] if key not in row]
    if missing:
        other = row_format(row)
        hint = f" (this row looks like {other}; one file uses one format)" if other else ""
        raise DataError(f"{where}: missing field {missing[0]!r} for data.format={fmt} "
                        f"(found keys: {sorted(row)}){hint}")
    if fmt == "messages":
        return validate_messages(row.get("messages"), where, need_assistant=False)
    if fmt == "sharegpt":
        return _sharegpt_messages(row, where)
    if fmt == "alpaca":
        return _alpaca_messages(row, where)
    return _prompt_completion_messages(row, where)


def _string(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _sharegpt_messages(row: dict, where: str) -> list[Message]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    messages = [Message("system", _string(row, "system", where))] if "system" in row else []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{where}: conversations[{index}] must be an object with 'from' and 'value'")
        speaker, value = turn.get("from"), turn.get("value")
        speaker = speaker.lower() if isinstance(speaker, str) else speaker  # "Human", "GPT" in some exports
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{where}: conversations[{index}].from is {speaker!r}; expected one of "
                            f"{', '.join(SHAREGPT_ROLES)}")
        if not isinstance(value, str):
            raise DataError(f"{where}: conversations[{index}].value must be a string")
        messages.append(Message(SHAREGPT_ROLES[speaker], value))
    return messages


def _alpaca_messages(row: dict, where: str) -> list[Message]:
    instruction = _string(row, "instruction", where)
    extra = _string(row, "input", where, allow_empty=True) if "input" in row and row.get("input") is not None else ""
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [Message("system", _string(row, "system", where))] if row.get("system") else []
    return messages + [Message("user", user), Message("assistant", _string(row, "output", where, allow_empty=True))]


def _prompt_completion_messages(row: dict, where: str) -> list[Message]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return [Message("user", _string(row, "prompt", where)), Message("assistant", completion)]
    if isinstance(prompt, list) and isinstance(completion, list):
        prompt_messages = validate_messages(prompt, where, "prompt", need_assistant=False)
        completion_messages = validate_messages(completion, where, "completion")
        return prompt_messages + completion_messages
    raise DataError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists, "
                    f"got {type(prompt).__name__} and {type(completion).__name__}")


def implicit_prompt(row: dict, where: str) -> dict:
    """trl's implicit-prompt preference row ({"chosen", "rejected"} message lists sharing their first turns) as an
    explicit {"prompt", "chosen", "rejected"} row; other rows unchanged."""
    if "prompt" in row or not all(isinstance(row.get(key), list) for key in ("chosen", "rejected")):
        return row
    chosen = validate_messages(row.get("chosen"), where, "chosen")
    rejected = validate_messages(row.get("rejected"), where, "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no leading turns to take as it")
    as_dicts = [[{"role": m.role, "content": m.content} for m in part]
                for part in (chosen[:shared], chosen[shared:], rejected[shared:])]
    return dict(zip(("prompt", "chosen", "rejected"), as_dicts))
