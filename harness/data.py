"""Training data: read and validate JSONL, check the chat template, tokenize with an assistant-only loss mask.

    conversations = load_sft_data(cfg.data)           # DataError naming file:line on bad rows
    check_chat_template(tokenizer, conversations)      # refuses foreign role markers, missing template
    examples = tokenize_sft(tokenizer, conversations, max_length=256)

The loss mask is computed here, not inside the trainer, so that it can be shown to the user (decoded, with the
loss-carrying tokens marked) before any training step, and tested.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from harness.artifacts import resolve_path
from harness.config import DataConfig
from harness.records import DataWarning

ROLES = ("system", "user", "assistant")

# Role markers of the common chat-template families. Any of these inside message *content* means the data was
# rendered for some model already: for another family it teaches the wrong format; for this model's own family
# it would be templated twice.
ROLE_MARKERS = {
    "ChatML (SmolLM, Qwen)": ("<|im_start|>", "<|im_end|>"),
    "Llama 3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "Llama 2 / Mistral": ("[INST]", "[/INST]", "<<SYS>>"),
    "Gemma": ("<start_of_turn>", "<end_of_turn>"),
    "Phi-3": ("<|user|>", "<|assistant|>", "<|end|>"),
}
LOSS_OPEN, LOSS_CLOSE = "⟦", "⟧"  # marks loss-carrying spans in the decoded sample


class DataError(ValueError):
    """Bad training or eval data; the message names the file and line."""


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str


def chat(messages: list[Message]) -> list[dict[str, str]]:
    """Messages in the form chat templates and trl take ({"role", "content"} dicts)."""
    return [{"role": m.role, "content": m.content} for m in messages]


def as_messages(messages: list[Message] | list[dict]) -> list[Message]:
    """Messages as typed values; {"role", "content"} dicts (as in JSONL rows) are converted."""
    return [m if isinstance(m, Message) else Message(m.get("role"), m.get("content")) for m in messages]


@dataclass
class Conversation:
    messages: list[Message]
    source: str  # "file:line", for error messages

    def __post_init__(self) -> None:
        self.messages = as_messages(self.messages)


@dataclass
class SFTData:
    conversations: list[Conversation]
    path: str
    rows_read: int
    duplicates_removed: int
    format: str = "messages"
    warnings: list[DataWarning] = field(default_factory=list)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the token carries loss
    source: str = ""
    truncated: bool = field(default=False)


def read_jsonl(path: str | Path, warnings: list[DataWarning] | None = None) -> list[tuple[str, dict]]:
    """Rows of a JSONL file as (file:line, object); line numbers are physical lines (split at \\n only).

    Blank lines are skipped; anything else must be one JSON object. Policies: a UTF-8 byte-order mark is accepted;
    UTF-16/UTF-32 and invalid UTF-8 are refused naming the line; a key given twice in one object, NaN/Infinity,
    lone surrogates, NUL and other control characters than tab, newline and carriage return are refused.
    """
    path = resolve_path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a JSONL file")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as err:  # unreadable: permissions, a FIFO, an I/O error
        raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and (raw[0] == 0 or raw[1] == 0)):
        raise DataError(f"{path}:1: the file is UTF-16 or UTF-32 encoded; JSONL must be UTF-8 (re-save it as UTF-8)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    rows = []
    for line_no, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{line_no}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: invalid UTF-8 (byte 0x{line_bytes[err.start]:02x} at byte {err.start + 1} "
                            "of the line); JSONL must be UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except _RowError as err:
            raise DataError(f"{where}: {err}") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        _check_text(row, where)
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


class _RowError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _RowError(f"key {key!r} appears twice in one object (JSON would silently keep the last)")
    return dict(pairs)


def _no_constant(name: str):
    raise _RowError(f"{name} is not valid JSON")


_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_text(value, where: str, field: str = "") -> None:
    """Refuse NUL, control characters (other than \\t \\n \\r) and lone surrogates anywhere in a row."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where, field)
            _check_text(item, where, f"{field}.{key}" if field else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, where, f"{field}[{index}]")
    elif isinstance(value, str) and (bad := _BAD_CHARS.search(value)):
        char = bad.group(0)
        kind = ("a NUL character" if char == "\x00" else "a lone surrogate" if "\ud800" <= char <= "\udfff"
                else "a control character")
        raise DataError(f"{where}: {field or 'a key'} contains {kind} (U+{ord(char):04X}) at character "
                        f"{bad.start() + 1}; remove it (only tab, newline and carriage return are allowed)")


def validate_messages(messages, where: str, key: str = "messages", need_assistant: bool = True) -> list[Message]:
    """A JSON row's message list, checked and typed; DataError naming the file:line and the message index."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: '{key}' must be a non-empty list of {{role, content}} messages")
    typed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {key}[{index}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: {key}[{index}] has unknown role {role!r} (expected {ROLES})")
        if isinstance(content, list):  # OpenAI content parts: text parts only, joined
            content = _text_parts(content, f"{where}: {key}[{index}].content")
        if not isinstance(content, str):
            raise DataError(f"{where}: {key}[{index}].content must be a string")
        typed.append(Message(role, content))
    if need_assistant and not any(message.role == "assistant" for message in typed):
        raise DataError(f"{where}: '{key}' has no assistant message, so nothing would be learned")
    return typed


def _text_parts(parts: list, where: str) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise DataError(f"{where}: only text content parts ({{\"type\": \"text\", \"text\": ...}}) can be "
                            "trained on")
        texts.append(part.get("text"))
    return "".join(texts)


def load_sft_data(data: DataConfig) -> SFTData:
    """SFT rows in any supported format (harness.formats), checked and deduplicated.

    Every row must carry a training signal: it ends with a non-empty assistant turn. Exact duplicates (same
    messages after conversion) are removed when data.dedupe is on, each with a warning naming the kept copy.
    """
    from harness import formats

    warnings: list[DataWarning] = []
    rows = read_jsonl(data.sft_file)
    fmt = formats.detect_format(rows[0][0], rows[0][1], data.format)
    conversations, seen, duplicates, ignored = [], {}, 0, {}
    for where, row in rows:
        messages = formats.row_messages(row, where, fmt)
        check_training_signal(messages, where)
        for key in formats.ignored_keys(row, fmt):
            ignored.setdefault(key, where)
        key = json.dumps(chat(messages), sort_keys=True)
        if data.dedupe and key in seen:
            duplicates += 1
            warnings.append(DataWarning(where, f"duplicate of {seen[key]}, removed (data.dedupe=true)"))
            continue
        seen[key] = where
        conversations.append(Conversation(messages, where))
    for key, where in ignored.items():
        warnings.append(DataWarning(where, f"field {key!r} is not part of data.format={fmt} and is ignored"))
    if data.max_sft_examples is not None:
        conversations = conversations[: data.max_sft_examples]
    return SFTData(conversations, str(data.sft_file), len(rows), duplicates, fmt, warnings)


def check_training_signal(messages: list[Message], where: str) -> None:
    """A training row must end with the answer to learn: a non-empty assistant turn, after a user turn."""
    if not any(m.role == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so nothing would be learned")
    if messages[-1].role != "assistant":
        raise DataError(f"{where}: the conversation ends with a {messages[-1].role} turn; it must end with the "
                        "assistant reply to learn (remove the trailing turn)")
    for index, message in enumerate(messages):
        if message.role == "assistant" and not message.content.strip():
            raise DataError(f"{where}: assistant turn {index} is empty or whitespace only, so there is nothing "
                            "to learn from it")
    if not any(m.role == "user" for m in messages):
        raise DataError(f"{where}: the conversation has no user turn for the assistant to answer")


def check_chat_template(tokenizer, conversations: list[Conversation]) -> None:
    """Refuse to train on data the model's chat template would render wrongly."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "The tokenizer has no chat template, so conversations cannot be rendered the way the model will be "
            "prompted. Use an instruct model or set model.chat_template."
        )
    own_template = tokenizer.chat_template
    for conversation in conversations:
        for message in conversation.messages:
            for family, markers in ROLE_MARKERS.items():
                for marker in markers:
                    if marker in message.content:
                        whose = "this model's own" if marker in own_template else f"another model family's ({family})"
                        raise DataError(
                            f"{conversation.source}: message content contains {marker!r}, {whose} role marker. "
                            "Training text must be plain messages; the chat template adds the markers."
                        )


def tokenize_sft(tokenizer, conversations: list[Conversation], max_length: int) -> list[TokenizedExample]:
    """Render each conversation with the model's chat template; mask = tokens of the assistant turns.

    Policy: a row longer than train.sft.max_length is truncated at the end; a row left without any assistant
    token is dropped. Both are reported by harness.datacard (warnings naming file:line).
    """
    examples = []
    for conversation in conversations:
        example = tokenize_conversation(tokenizer, conversation.messages, max_length, conversation.source)
        if any(example.assistant_masks):
            examples.append(example)
    if not examples:
        raise DataError(f"no training example has an assistant token left within train.sft.max_length={max_length} "
                        "tokens; raise train.sft.max_length")
    return examples


def tokenize_conversation(tokenizer, messages: list[Message], max_length: int, source: str = "") -> TokenizedExample:
    messages = as_messages(messages)
    text = render_chat(tokenizer, messages, source)
    spans = _assistant_spans(tokenizer, messages, text, source)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start <= tok_start and tok_end <= end for start, end in spans) and tok_end > tok_start)
        for tok_start, tok_end in encoded.offset_mapping
    ]
    input_ids = list(encoded.input_ids)
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], mask[:max_length], source, truncated)


def render_chat(tokenizer, messages: list[Message], source: str, add_generation_prompt: bool = False) -> str:
    """The chat template's text; a template that rejects the row (e.g. roles out of order) is a DataError."""
    try:
        return tokenizer.apply_chat_template(chat(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # noqa: BLE001 -- jinja2's TemplateError, raise_exception(), or the template's own TypeError
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{source}: the model's chat template rejects this conversation: {message}") from None


def _assistant_spans(tokenizer, messages: list[Message], text: str, source: str) -> list[tuple[int, int]]:
    """Character spans of each assistant turn, found by rendering the conversation prefix by prefix."""
    spans = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = render_chat(tokenizer, messages[:index], source, add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: index + 1], source)
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise DataError(
                f"{source}: the chat template does not render conversations prefix by prefix, so the assistant "
                "tokens cannot be located for an assistant-only loss"
            )
        spans.append((len(before), len(through)))
    return spans


def render_loss_sample(tokenizer, example: TokenizedExample) -> str:
    """The decoded example with loss-carrying spans wrapped in ⟦ ⟧, so a human can check the mask."""
    pieces = []
    pairs = zip(example.input_ids, example.assistant_masks)
    for carries_loss, run in groupby(pairs, key=lambda pair: pair[1]):
        decoded = tokenizer.decode([token_id for token_id, _ in run])
        pieces.append(f"{LOSS_OPEN}{decoded}{LOSS_CLOSE}" if carries_loss else decoded)
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------------------
# Preference data (DPO)
#
#     preference = load_preference_data(cfg.data)       # DataError naming file:line on bad rows
#     check_chat_template(tokenizer, preference.conversations())
#
# A row is {"prompt", "chosen", "rejected"}: either message lists (the prompt ends with a user turn; chosen and
# rejected are one assistant turn each) or plain strings, which trl uses verbatim (no chat template, EOS appended).
# One file uses one format.

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    prompt: list[Message] | str
    chosen: list[Message] | str
    rejected: list[Message] | str
    source: str  # "file:line", for error messages

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, as_messages(value))

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def prompt_messages(self) -> list[Message]:
        return self.prompt if isinstance(self.prompt, list) else [Message("user", self.prompt)]

    def as_trl_row(self) -> dict:
        """The row trl's DPOTrainer takes: message lists as {"role", "content"} dicts, strings verbatim."""
        return {name: chat(value) if isinstance(value, list) else value
                for name, value in (("prompt", self.prompt), ("chosen", self.chosen), ("rejected", self.rejected))}

    def conversations(self) -> list[Conversation]:
        """prompt + chosen and prompt + rejected; a plain-string row as one user and one assistant turn."""
        return [
            Conversation(self.prompt_messages + _answer_messages(answer), self.source)
            for answer in (self.chosen, self.rejected)
        ]


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    path: str
    rows_read: int
    duplicates_removed: int
    warnings: list[DataWarning] = field(default_factory=list)

    def conversations(self) -> list[Conversation]:
        return [conversation for pair in self.pairs for conversation in pair.conversations()]


def load_preference_data(data: DataConfig) -> PreferenceData:
    if not data.preference_file:
        raise DataError("data.preference_file is not set: DPO needs rows of {prompt, chosen, rejected}")
    from harness.formats import implicit_prompt

    rows = read_jsonl(data.preference_file)
    pairs, seen, duplicates, warnings = [], {}, 0, []
    first: PreferencePair | None = None
    for where, row in rows:
        pair = _preference_pair(implicit_prompt(row, where), where)
        if first is None:
            first = pair
        elif pair.conversational != first.conversational:
            formats = {True: "message lists", False: "plain strings"}
            raise DataError(
                f"{where}: this row uses {formats[pair.conversational]} but {first.source} uses "
                f"{formats[first.conversational]}; one preference file must use one format"
            )
        key = json.dumps(pair.as_trl_row(), sort_keys=True)
        if data.dedupe and key in seen:
            duplicates += 1
            warnings.append(DataWarning(where, f"duplicate of {seen[key]}, removed (data.dedupe=true)"))
            continue
        seen[key] = where
        pairs.append(pair)
    if data.max_preference_examples is not None:
        pairs = pairs[: data.max_preference_examples]
    return PreferenceData(pairs, str(data.preference_file), len(rows), duplicates, warnings)


def _preference_pair(row: dict, where: str) -> PreferencePair:
    for key in PREFERENCE_FIELDS:
        if key not in row:
            raise DataError(f"{where}: missing field {key!r} (found keys: {sorted(row)})")
    kinds = {key: type(row[key]).__name__ for key in PREFERENCE_FIELDS}
    if all(isinstance(row[key], str) for key in PREFERENCE_FIELDS):
        prompt, chosen, rejected = (row[key] for key in PREFERENCE_FIELDS)
        for key in PREFERENCE_FIELDS:
            if not row[key].strip():
                raise DataError(f"{where}: {key!r} is empty")
    elif all(isinstance(row[key], list) for key in PREFERENCE_FIELDS):
        prompt = validate_messages(row.get("prompt"), where, "prompt", need_assistant=False)
        if prompt[-1].role != "user":
            raise DataError(
                f"{where}: 'prompt' ends with a turn by {prompt[-1].role!r}; it must end with the user turn that "
                "'chosen' and 'rejected' answer (one prompt per row, the answers go in 'chosen'/'rejected')"
            )
        if not prompt[-1].content.strip():
            raise DataError(f"{where}: the last user turn of 'prompt' is empty")
        chosen, rejected = (_single_assistant_turn(row[key], where, key) for key in ("chosen", "rejected"))
    else:
        raise DataError(
            f"{where}: 'prompt', 'chosen' and 'rejected' must all be message lists or all be strings, got {kinds}"
        )
    if _answer_text(chosen).strip() == _answer_text(rejected).strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair expresses no preference")
    return PreferencePair(prompt, chosen, rejected, where)


def _single_assistant_turn(messages, where: str, key: str) -> list[Message]:
    messages = validate_messages(messages, where, key)
    roles = [message.role for message in messages]
    if len(roles) != 1 or roles[0] != "assistant":
        raise DataError(f"{where}: {key!r} must be a single assistant turn, got roles {roles}")
    if not messages[0].content.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return messages


def _answer_text(answer: list[Message] | str) -> str:
    return answer if isinstance(answer, str) else answer[0].content


def _answer_messages(answer: list[Message] | str) -> list[Message]:
    return answer if isinstance(answer, list) else [Message("assistant", answer)]
