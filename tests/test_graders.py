"""Each grader on known right and wrong answers, config validation, and eval-set aggregation."""

from pathlib import Path

import pytest

from harness.graders import (
    GRADER_TYPES,
    GRADER_VERSIONS,
    Grade,
    GraderConfig,
    aggregate,
    grade,
    grader_version,
)

TESTS_DIR = Path(__file__).parent


# Custom graders referenced as "test_graders:<name>" once TESTS_DIR is on sys.path.
def word_overlap_grader(output, reference):
    output_words, reference_words = set(output.split()), set(reference.split())
    return len(output_words & reference_words) / len(reference_words)


def grader_with_details(output, reference):
    return 0.5, {"why": "half right"}


def out_of_range_grader(output, reference):
    return 2.0


@pytest.fixture
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))


# --- exact_match ---------------------------------------------------------------------------------


def test_exact_match_default_normalisation_strips_and_collapses_whitespace():
    cfg = GraderConfig(type="exact_match")
    assert grade(cfg, "  Paris \n is   nice ", "Paris is nice").score == 1.0
    assert grade(cfg, "paris is nice", "Paris is nice").score == 0.0  # case kept by default
    assert grade(cfg, "Paris is nice.", "Paris is nice").score == 0.0  # punctuation kept by default


def test_exact_match_lowercase_and_punctuation_options():
    cfg = GraderConfig(type="exact_match", lowercase=True, strip_punctuation=True)
    assert grade(cfg, "PARIS, is nice!", "Paris is nice").score == 1.0
    assert grade(cfg, "Lyon is nice", "Paris is nice").score == 0.0


def test_exact_match_without_whitespace_normalisation():
    cfg = GraderConfig(type="exact_match", strip=False, collapse_whitespace=False)
    assert grade(cfg, "Paris", "Paris").score == 1.0
    assert grade(cfg, " Paris", "Paris").score == 0.0
    assert grade(cfg, "Paris  is", "Paris is").score == 0.0


# --- json_fields ---------------------------------------------------------------------------------

REFERENCE = {"name": "Ada", "age": 36}


def test_json_fields_right_json_scores_one():
    result = grade(GraderConfig(type="json_fields"), '  {"age": 36, "name": "Ada"}\n', REFERENCE)
    assert result.score == 1.0
    assert result.details == {
        "valid_json": True,
        "fields": {"name": True, "age": True},
        "extra_keys": [],
        "missing_keys": [],
    }


def test_json_fields_reference_may_be_a_json_string():
    cfg = GraderConfig(type="json_fields")
    assert grade(cfg, '{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}').score == 1.0


def test_json_fields_wrong_value_marks_that_field():
    result = grade(GraderConfig(type="json_fields"), '{"name": "Ada", "age": 37}', REFERENCE)
    assert result.score == 0.0
    assert result.details["valid_json"] is True
    assert result.details["fields"] == {"name": True, "age": False}


@pytest.mark.parametrize(
    "output",
    [
        'Here is the JSON: {"name": "Ada", "age": 36}',
        '{"name": "Ada", "age": 36} Hope this helps!',
        '```json\n{"name": "Ada", "age": 36}\n```',
        '{"name": "Ada", "age": 36',
        '[{"name": "Ada", "age": 36}]',
        "",
    ],
)
def test_json_fields_anything_but_a_bare_json_object_is_invalid(output):
    result = grade(GraderConfig(type="json_fields"), output, REFERENCE)
    assert result.score == 0.0
    assert result.details["valid_json"] is False
    assert result.details["fields"] == {"name": False, "age": False}


def test_json_fields_missing_field():
    result = grade(GraderConfig(type="json_fields"), '{"name": "Ada"}', REFERENCE)
    assert result.score == 0.0
    assert result.details["missing_keys"] == ["age"]
    assert result.details["fields"] == {"name": True, "age": False}


def test_json_fields_extra_key_fails_the_example_but_not_the_fields():
    output = '{"name": "Ada", "age": 36, "city": "London"}'
    result = grade(GraderConfig(type="json_fields"), output, REFERENCE)
    assert result.score == 0.0
    assert result.details["extra_keys"] == ["city"]
    assert result.details["fields"] == {"name": True, "age": True}


def test_json_fields_int_and_str_are_different_values():
    cfg = GraderConfig(type="json_fields")
    assert grade(cfg, '{"name": "Ada", "age": "36"}', REFERENCE).details["fields"]["age"] is False
    assert grade(cfg, '{"flag": 1}', {"flag": True}).score == 0.0
    assert grade(cfg, '{"age": 36.0}', {"age": 36}).score == 1.0


def test_json_fields_compares_only_configured_fields():
    cfg = GraderConfig(type="json_fields", fields=["name"])
    result = grade(cfg, '{"name": "Ada", "age": 99}', REFERENCE)
    assert result.score == 1.0
    assert result.details["fields"] == {"name": True}


def test_json_fields_configured_field_missing_from_reference_raises():
    with pytest.raises(ValueError, match="fields"):
        grade(GraderConfig(type="json_fields", fields=["email"]), '{"email": "a@b"}', REFERENCE)


# --- regex ---------------------------------------------------------------------------------------


def test_regex_search_and_fullmatch():
    search = GraderConfig(type="regex", pattern=r"\d{4}-\d{2}-\d{2}")
    assert grade(search, "It was on 2024-03-01.", "").score == 1.0
    assert grade(search, "It was in March.", "").score == 0.0

    full = GraderConfig(type="regex", pattern=r"\d{4}-\d{2}-\d{2}", regex_fullmatch=True)
    assert grade(full, " 2024-03-01\n", "").score == 1.0  # stripped before matching
    assert grade(full, "It was on 2024-03-01.", "").score == 0.0


def test_regex_lowercase_normalises_the_output():
    cfg = GraderConfig(type="regex", pattern="^yes$", lowercase=True)
    assert grade(cfg, "YES", "").score == 1.0
    assert grade(GraderConfig(type="regex", pattern="^yes$"), "YES", "").score == 0.0


# --- multiple_choice -----------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["The answer is (C).", "C", "C)", "(C)", "Answer: C", "C. Paris"])
def test_multiple_choice_extracts_the_letter(output):
    cfg = GraderConfig(type="multiple_choice")
    assert grade(cfg, output, "C").score == 1.0
    assert grade(cfg, output, "B").score == 0.0


def test_multiple_choice_prefers_answer_cue_over_the_article_a():
    result = grade(GraderConfig(type="multiple_choice"), "A careful reading shows the answer is B.", "B")
    assert result.score == 1.0
    assert result.details["extracted"] == "B"


def test_multiple_choice_letters_inside_words_do_not_count():
    result = grade(GraderConfig(type="multiple_choice"), "Because DNA replicates", "B")
    assert result.score == 0.0
    assert result.details["extracted"] is None


def test_multiple_choice_lowercase_option():
    assert grade(GraderConfig(type="multiple_choice", lowercase=True), "b.", "B").score == 1.0
    assert grade(GraderConfig(type="multiple_choice"), "b.", "B").score == 0.0


def test_multiple_choice_letter_outside_choices_is_not_extracted():
    cfg = GraderConfig(type="multiple_choice", choices="AB")
    assert grade(cfg, "C", "A").details["extracted"] is None


def test_multiple_choice_reference_outside_choices_raises():
    with pytest.raises(ValueError, match="choices"):
        grade(GraderConfig(type="multiple_choice"), "A", "E")


# --- numeric -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        ("The total is 1,000 apples.", "1000", 1000.0),
        ("It fell to -3 degrees", -3, -3.0),
        ("about 3.5 km", "3.5", 3.5),
        ("1e3", 1000, 1000.0),
        ("$2,500,000.50 in total", 2500000.5, 2500000.5),
    ],
)
def test_numeric_parses_the_first_number(output, reference, expected):
    result = grade(GraderConfig(type="numeric"), output, reference)
    assert result.details["parsed"] == expected
    assert result.score == 1.0


def test_numeric_absolute_tolerance():
    cfg = GraderConfig(type="numeric", tolerance=0.05)
    assert grade(cfg, "3.14", "3.1416").score == 1.0
    assert grade(cfg, "3.0", "3.1416").score == 0.0
    assert grade(GraderConfig(type="numeric"), "3.14", "3.1416").score == 0.0


def test_numeric_relative_tolerance():
    cfg = GraderConfig(type="numeric", relative_tolerance=0.01)
    assert grade(cfg, "1,005", 1000).score == 1.0
    assert grade(cfg, "1,020", 1000).score == 0.0


def test_numeric_unparseable_output_scores_zero():
    result = grade(GraderConfig(type="numeric"), "I don't know", "42")
    assert result.score == 0.0
    assert result.details["parsed"] is None


# --- custom --------------------------------------------------------------------------------------


def test_custom_grader_is_imported_and_called(tests_on_path):
    cfg = GraderConfig(type="custom", function="test_graders:word_overlap_grader", version="2")
    assert grade(cfg, "the cat sat", "the cat ran away").score == 0.5
    assert grader_version(cfg) == "2"


def test_custom_grader_may_return_details(tests_on_path):
    cfg = GraderConfig(type="custom", function="test_graders:grader_with_details", version="1")
    assert grade(cfg, "x", "y") == Grade(score=0.5, details={"why": "half right"})


def test_custom_grader_score_outside_unit_interval_raises(tests_on_path):
    cfg = GraderConfig(type="custom", function="test_graders:out_of_range_grader", version="1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grade(cfg, "x", "y")


# --- versions and validation ---------------------------------------------------------------------


def test_every_builtin_grader_has_a_version():
    assert set(GRADER_TYPES) == set(GRADER_VERSIONS) | {"custom"}
    for grader_type in GRADER_VERSIONS:
        cfg = GraderConfig(type=grader_type, pattern="x")
        assert grader_version(cfg) == GRADER_VERSIONS[grader_type]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"type": "fuzzy"}, "GraderConfig.type.*exact_match, json_fields"),
        ({"type": "regex"}, "GraderConfig.pattern"),
        ({"type": "regex", "pattern": "(unclosed"}, "GraderConfig.pattern"),
        ({"type": "numeric", "tolerance": -0.1}, "GraderConfig.tolerance"),
        ({"type": "numeric", "relative_tolerance": -0.1}, "GraderConfig.relative_tolerance"),
        ({"type": "multiple_choice", "choices": ""}, "GraderConfig.choices"),
        ({"type": "multiple_choice", "choices": "AAB"}, "GraderConfig.choices"),
        ({"type": "custom", "version": "1"}, "GraderConfig.function"),
        ({"type": "custom", "function": "test_graders:word_overlap_grader"}, "GraderConfig.version"),
        ({"type": "custom", "function": "no_such_module_xyz:f", "version": "1"}, "GraderConfig.function"),
        ({"type": "custom", "function": "json:no_such_function", "version": "1"}, "GraderConfig.function"),
        ({"type": "custom", "function": "json.loads", "version": "1"}, "GraderConfig.function"),
    ],
)
def test_invalid_config_raises_naming_the_field(kwargs, named, tests_on_path):
    with pytest.raises(ValueError, match=named):
        GraderConfig(**kwargs)


# --- aggregate -----------------------------------------------------------------------------------


def test_aggregate_mean_score():
    cfg = GraderConfig(type="exact_match")
    grades = [grade(cfg, output, "yes") for output in ["yes", "no", "yes", "yes"]]
    assert aggregate(cfg, grades) == {"score": 0.75}


def test_aggregate_json_fields_reports_validity_and_per_field_accuracy():
    cfg = GraderConfig(type="json_fields")
    outputs = [
        '{"name": "Ada", "age": 36}',  # all right
        '{"name": "Ada", "age": 37}',  # age wrong
        '{"name": "Bob", "age": 37}',  # both wrong
        "Sure! Here it is.",  # invalid
    ]
    metrics = aggregate(cfg, [grade(cfg, output, REFERENCE) for output in outputs])
    assert metrics == {"score": 0.25, "valid_json": 0.75, "field/name": 0.5, "field/age": 0.25}


def test_aggregate_of_nothing_raises():
    with pytest.raises(ValueError):
        aggregate(GraderConfig(), [])
