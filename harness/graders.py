"""Versioned graders that turn one model output into a score in [0, 1] for held-out task evals.

An eval set names its grader as a `GraderConfig` (a Hydra schema); the eval stage calls
`grade(cfg, output, reference)` once per example and `aggregate(cfg, grades)` once per set:

    cfg = GraderConfig(type="json_fields", fields=["name", "age"])
    grades = [grade(cfg, output, reference) for output, reference in zip(outputs, references)]
    heldout_metrics = aggregate(cfg, grades)   # {"score": ..., "valid_json": ..., "field/name": ...}

Scores are only comparable between runs graded by the same grader version, so every behaviour change
to a built-in grader must bump its entry in `GRADER_VERSIONS` (and a custom grader its `version`);
`grader_version(cfg)` is what the eval stage records next to the score.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import string
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable

# Bump a grader's version whenever its scoring changes for any input.
GRADER_VERSIONS: dict[str, str] = {
    "exact_match": "1",
    "json_fields": "1",
    "regex": "1",
    "multiple_choice": "1",
    "numeric": "1",
}
GRADER_TYPES: tuple[str, ...] = (*GRADER_VERSIONS, "custom")


@dataclass
class GraderConfig:
    """One grader of an eval set (Hydra schema: every field documented with a comment)."""

    type: str = "exact_match"  # exact_match | json_fields | regex | multiple_choice | numeric | custom
    lowercase: bool = False  # normalisation for exact_match (and regex/multiple_choice input)
    strip: bool = True  # strip leading/trailing whitespace before comparing
    collapse_whitespace: bool = True  # any run of whitespace counts as one space
    strip_punctuation: bool = False  # drop ASCII punctuation before comparing
    fields: list[str] = field(default_factory=list)  # json_fields: keys to compare (empty = reference's keys)
    pattern: str = ""  # regex: the model output must match (re.search; fullmatch if regex_fullmatch)
    regex_fullmatch: bool = False  # regex: the whole normalised output must match the pattern
    choices: str = "ABCD"  # multiple_choice: letters allowed
    tolerance: float = 0.0  # numeric: absolute tolerance
    relative_tolerance: float = 0.0  # numeric: tolerance as a fraction of |reference|
    function: str = ""  # custom: "package.module:function", called as function(output, reference)
    version: str = ""  # custom: the custom grader's version (required, bump when it changes)

    def __post_init__(self) -> None:
        validate_grader(self)


@dataclass
class Grade:
    """The score of one model output and what the grader saw (for per-example reports)."""

    score: float  # in [0, 1]
    details: dict[str, Any]  # grader-specific, e.g. {"valid_json": True, "fields": {...}}


def grader_version(cfg: GraderConfig) -> str:
    """The version to record next to scores produced by this grader."""
    if cfg.type == "custom":
        return cfg.version
    return GRADER_VERSIONS[cfg.type]


def validate_grader(cfg: GraderConfig) -> None:
    """Raise ValueError naming the offending field if `cfg` cannot grade anything."""
    if cfg.type not in GRADER_TYPES:
        raise ValueError(
            f"GraderConfig.type: unknown grader type {cfg.type!r}; valid types: {', '.join(GRADER_TYPES)}"
        )
    if cfg.tolerance < 0:
        raise ValueError(f"GraderConfig.tolerance must be >= 0, got {cfg.tolerance}")
    if cfg.relative_tolerance < 0:
        raise ValueError(f"GraderConfig.relative_tolerance must be >= 0, got {cfg.relative_tolerance}")
    if cfg.type == "regex":
        if not cfg.pattern:
            raise ValueError("GraderConfig.pattern is required when type == 'regex'")
        try:
            re.compile(cfg.pattern)
        except re.error as err:
            raise ValueError(f"GraderConfig.pattern: invalid regex {cfg.pattern!r}: {err}") from err
    if cfg.type == "multiple_choice":
        if not cfg.choices or not all(letter.isalpha() for letter in cfg.choices):
            raise ValueError(f"GraderConfig.choices must be one or more letters, got {cfg.choices!r}")
        if len(set(cfg.choices.upper())) != len(cfg.choices):
            raise ValueError(f"GraderConfig.choices has a repeated letter: {cfg.choices!r}")
    if cfg.type == "custom":
        if not cfg.function:
            raise ValueError("GraderConfig.function is required when type == 'custom' ('module:function')")
        if not cfg.version:
            raise ValueError(
                "GraderConfig.version is required when type == 'custom': scores from different "
                "versions of a custom grader must not be compared"
            )
        _load_custom_function(cfg.function)


def grade(cfg: GraderConfig, output: str, reference: str | dict[str, Any] | float) -> Grade:
    """Score one model output against its reference with the grader `cfg` describes."""
    if cfg.type == "exact_match":
        return _grade_exact_match(cfg, output, reference)
    elif cfg.type == "json_fields":
        return _grade_json_fields(cfg, output, reference)
    elif cfg.type == "regex":
        return _grade_regex(cfg, output)
    elif cfg.type == "multiple_choice":
        return _grade_multiple_choice(cfg, output, reference)
    elif cfg.type == "numeric":
        return _grade_numeric(cfg, output, reference)
    elif cfg.type == "custom":
        return _grade_custom(cfg, output, reference)
    raise ValueError(f"GraderConfig.type: unknown grader type {cfg.type!r}")


def aggregate(cfg: GraderConfig, grades: list[Grade]) -> dict[str, float]:
    """Eval-set metrics: mean score, plus JSON validity and per-field accuracy for json_fields."""
    if not grades:
        raise ValueError("aggregate: no grades to aggregate")
    metrics = {"score": sum(g.score for g in grades) / len(grades)}
    if cfg.type == "json_fields":
        metrics["valid_json"] = sum(g.details["valid_json"] for g in grades) / len(grades)
        # With cfg.fields empty each example compares its own reference's keys, so a field's accuracy
        # is over the examples that compared it.
        keys = list(cfg.fields) or list(dict.fromkeys(k for g in grades for k in g.details["fields"]))
        for key in keys:
            compared = [g.details["fields"][key] for g in grades if key in g.details["fields"]]
            metrics[f"field/{key}"] = sum(compared) / len(compared)
    return metrics


# ---------------------------------------------------------------------------------------------------
# One private function per grader.


def _normalise(text: str, cfg: GraderConfig) -> str:
    if cfg.strip_punctuation:
        text = text.translate(_NO_PUNCTUATION)
    if cfg.lowercase:
        text = text.lower()
    if cfg.collapse_whitespace:
        text = re.sub(r"\s+", " ", text)
    if cfg.strip:
        text = text.strip()
    return text


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _grade_exact_match(cfg: GraderConfig, output: str, reference: Any) -> Grade:
    normalised_output = _normalise(output, cfg)
    normalised_reference = _normalise(str(reference), cfg)
    return Grade(
        score=float(normalised_output == normalised_reference),
        details={"normalised_output": normalised_output, "normalised_reference": normalised_reference},
    )


def _grade_json_fields(cfg: GraderConfig, output: str, reference: Any) -> Grade:
    if isinstance(reference, str):
        reference = json.loads(reference)
    if not isinstance(reference, dict):
        raise ValueError(f"json_fields: reference must be a JSON object, got {type(reference).__name__}")
    keys = list(cfg.fields) or list(reference)
    absent = [key for key in keys if key not in reference]
    if absent:
        raise ValueError(f"json_fields: GraderConfig.fields {absent} missing from the reference {reference}")

    # Strict on purpose: the harness trains the model to answer with JSON only, so prose or
    # ```json fences around the object are a failure, not something to repair.
    try:
        parsed = json.loads(output.strip())
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        field_correct = {key: False for key in keys}
        details = {"valid_json": False, "fields": field_correct, "extra_keys": [], "missing_keys": keys}
        return Grade(score=0.0, details=details)
    field_correct = {key: key in parsed and _json_equal(parsed[key], reference[key]) for key in keys}
    extra_keys = [key for key in parsed if key not in reference]
    missing_keys = [key for key in keys if key not in parsed]
    details = {
        "valid_json": True,
        "fields": field_correct,
        "extra_keys": extra_keys,
        "missing_keys": missing_keys,
    }
    return Grade(score=float(all(field_correct.values()) and not extra_keys), details=details)


def _json_equal(value: Any, expected: Any) -> bool:
    """JSON equality that keeps types apart: 34 != "34" and true != 1 (but 34 == 34.0)."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return value == expected
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(map(_json_equal, value, expected))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_json_equal(value[k], expected[k]) for k in value)
    if value is None or expected is None:
        return value is None and expected is None
    return type(value) is type(expected) and value == expected


def _grade_regex(cfg: GraderConfig, output: str) -> Grade:
    normalised_output = _normalise(output, cfg)
    match = (re.fullmatch if cfg.regex_fullmatch else re.search)(cfg.pattern, normalised_output)
    return Grade(score=float(match is not None), details={"match": match.group(0) if match else None})


def _grade_multiple_choice(cfg: GraderConfig, output: str, reference: Any) -> Grade:
    # With lowercase on, output, choices and reference are all lowercased: "b." counts as B.
    letters = cfg.choices.lower() if cfg.lowercase else cfg.choices
    expected = str(reference).strip()
    expected = expected.lower() if cfg.lowercase else expected
    if len(expected) != 1 or expected not in letters:
        raise ValueError(f"multiple_choice: reference {reference!r} is not in GraderConfig.choices")
    text = _normalise(output, cfg)
    letter_class = "[" + re.escape(letters) + "]"
    standalone = rf"(?<![A-Za-z0-9])({letter_class})(?![A-Za-z0-9])"
    # An explicit "answer is (C)" wins over an earlier standalone letter, which is often the article
    # "A" ("A reasonable guess... the answer is C").
    cue = re.search(rf"(?i:answer)\W{{0,3}}(?:(?i:is)\W{{0,3}})?\(?{standalone}", text)
    match = cue or re.search(standalone, text)
    extracted = match.group(1) if match else None
    return Grade(score=float(extracted == expected), details={"extracted": extracted, "expected": expected})


# First number in the text: optional sign, "1,000"-style thousands groups or plain digits, optional
# decimals, optional exponent ("1e3").
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def _grade_numeric(cfg: GraderConfig, output: str, reference: Any) -> Grade:
    expected = _parse_reference_number(reference)
    match = _NUMBER.search(output)
    if match is None:
        return Grade(score=0.0, details={"parsed": None, "reference": expected, "abs_error": None})
    parsed = float(match.group(0).replace(",", ""))
    abs_error = abs(parsed - expected)
    allowed = max(cfg.tolerance, cfg.relative_tolerance * abs(expected))
    return Grade(
        score=float(abs_error <= allowed),
        details={"parsed": parsed, "reference": expected, "abs_error": abs_error},
    )


def _parse_reference_number(reference: Any) -> float:
    if isinstance(reference, Real) and not isinstance(reference, bool):
        return float(reference)
    if isinstance(reference, str) and _NUMBER.fullmatch(reference.strip()):
        return float(reference.strip().replace(",", ""))
    raise ValueError(f"numeric: reference {reference!r} is not a number")


def _grade_custom(cfg: GraderConfig, output: str, reference: Any) -> Grade:
    result = _load_custom_function(cfg.function)(output, reference)
    details: dict[str, Any] = {}
    if isinstance(result, tuple):
        result, details = result
    if not isinstance(result, Real) or math.isnan(result) or not 0.0 <= result <= 1.0:
        raise ValueError(f"custom grader {cfg.function!r} returned {result!r}, not a float in [0, 1]")
    return Grade(score=float(result), details=dict(details))


def _load_custom_function(function_path: str) -> Callable[..., Any]:
    module_name, _, function_name = function_path.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"GraderConfig.function must be 'package.module:function', got {function_path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"GraderConfig.function: cannot import module {module_name!r}: {err}") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"GraderConfig.function: {module_name!r} has no function {function_name!r}")
    return function
