"""Rule checkers for harness_instruct_follow: does the answer obey the prompt's verifiable rule?

lm-eval calls `process_results(doc, results)` once per doc with the generated text in
`results[0]`; it returns {"follow": 1} when the rule holds and {"follow": 0} otherwise. Only the
form of the answer is checked, never its truth (that is harness_general_mc's job).
"""

import re

_WORD = re.compile(r"[\w'-]+")
_LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•])\s+\S")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _words(response: str) -> list[str]:
    """Words with surrounding punctuation and markdown dropped: '**Blue.**' -> ['Blue']."""
    return _WORD.findall(response)


def one_word(response: str, params: dict) -> bool:
    return len(_words(response)) == 1


def uppercase(response: str, params: dict) -> bool:
    return any(c.isalpha() for c in response) and not any(c.islower() for c in response)


def lowercase(response: str, params: dict) -> bool:
    return any(c.isalpha() for c in response) and not any(c.isupper() for c in response)


def list_n(response: str, params: dict) -> bool:
    # Count list items ("1. x", "2) y", "- z"); an intro line is allowed, a missing or extra item is not.
    items = [line for line in response.splitlines() if _LIST_ITEM.match(line)]
    return len(items) == params["n"]


def one_sentence(response: str, params: dict) -> bool:
    # One line, ending in the only sentence-final punctuation mark ("...word. Next" would be two).
    one_line = "\n" not in response
    return one_line and len(_SENTENCE_END.findall(response)) == 1 and response.endswith((".", "!", "?"))


def include_word(response: str, params: dict) -> bool:
    return params["word"].lower() in (w.lower() for w in _words(response))


def repeat_exact(response: str, params: dict) -> bool:
    return response == params["text"]


def yes_no_start(response: str, params: dict) -> bool:
    words = _words(response)
    return bool(words) and words[0].lower() in ("yes", "no")


def end_with_word(response: str, params: dict) -> bool:
    words = _words(response)
    return bool(words) and words[-1].lower() == params["word"].lower()


def start_with_word(response: str, params: dict) -> bool:
    words = _words(response)
    return bool(words) and words[0].lower() == params["word"].lower()


def yes_no(response: str, params: dict) -> bool:
    return [w.lower() for w in _words(response)] in (["yes"], ["no"])


def max_words(response: str, params: dict) -> bool:
    return 0 < len(response.split()) <= params["n"]


def number_only(response: str, params: dict) -> bool:
    return re.fullmatch(r"\d+", response.strip().rstrip(".")) is not None


def wrap_in_quotes(response: str, params: dict) -> bool:
    text = response.strip()
    return len(text) >= 2 and text[0] in "\"“" and text[-1] in "\"”"


CHECKS = {
    "yes_no_start": yes_no_start,
    "list_n": list_n,
    "one_sentence": one_sentence,
    "max_words": max_words,
    "include_word": include_word,
    "repeat_exact": repeat_exact,
    "one_word": one_word,
    "uppercase": uppercase,
    "lowercase": lowercase,
    "end_with_word": end_with_word,
    "start_with_word": start_with_word,
    "yes_no": yes_no,
    "number_only": number_only,
    "wrap_in_quotes": wrap_in_quotes,
}


def follows_rule(rule: str, params: dict, response: str) -> bool:
    if rule not in CHECKS:
        raise ValueError(f"unknown rule {rule!r}; known rules: {sorted(CHECKS)}")
    return CHECKS[rule](response.strip(), params)


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    return {"follow": int(follows_rule(doc["rule"], doc["params"], results[0]))}
