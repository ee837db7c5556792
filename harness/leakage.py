"""Leakage check: are held-out prompts (or near copies) in the training data?

Two tests per held-out prompt, on normalised text (lowercase, punctuation stripped, whitespace collapsed):
an exact match with a training prompt, and a shared word n-gram (13 by default, as in GPT-3's contamination
study). The task's instruction is not leakage: the word prefix shared by every held-out prompt is stripped
from all prompts, and n-grams that occur in many held-out prompts (`template_fraction`) are ignored. Over the threshold the run is refused, naming the overlapping examples.

    report = check_leakage(train_prompts, heldout_prompts, cfg.eval.leakage)   # LeakageError if over
"""

from __future__ import annotations

import re
from collections import Counter

from harness.config import LeakageConfig
from harness.data import DataError
from harness.records import LeakageReport

SHORT_MIN_WORDS = 4  # shorter held-out prompts ("Hi", "Translate this") only count when equal to a training prompt


class LeakageError(DataError):
    """Too many held-out prompts overlap with training prompts."""


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _common_prefix(word_lists: list[list[str]]) -> list[str]:
    prefix = word_lists[0] if word_lists else []
    for words in word_lists[1:]:
        length = 0
        while length < min(len(prefix), len(words)) and prefix[length] == words[length]:
            length += 1
        prefix = prefix[:length]
    return prefix


def _strip_prefix(words: list[str], prefix: list[str]) -> list[str]:
    return words[len(prefix) :] if prefix and words[: len(prefix)] == prefix else words


def _contained(needle: str, joined: str, train_sources: list[str]) -> str | None:
    """The first training prompt containing `needle` (space-delimited words), found with one search."""
    at = joined.find(needle)
    if at < 0:
        return None
    return train_sources[joined.count("\n", 0, at)]


def check_leakage(
    train_prompts: list[tuple[str, str]], heldout_prompts: list[tuple[str, str]], cfg: LeakageConfig
) -> LeakageReport:
    """Prompts are (source, text) pairs; sources (file:line) name the overlapping examples in the error."""
    heldout_words = [normalise(text).split() for _, text in heldout_prompts]
    prefix = _common_prefix(heldout_words)
    heldout_words = [_strip_prefix(words, prefix) for words in heldout_words]
    heldout_grams = [_ngrams(words, cfg.ngram) for words in heldout_words]
    frequency = Counter(gram for grams in heldout_grams for gram in grams)
    # A gram in a single held-out prompt is never the template, however small the eval set is.
    template = {gram for gram, count in frequency.items()
                if count >= 2 and count > cfg.template_fraction * len(heldout_prompts)}

    train_exact: dict[str, str] = {}
    train_gram_source: dict[tuple[str, ...], str] = {}
    train_texts, train_sources = [], []
    for source, text in train_prompts:
        full = normalise(text)
        norm = " ".join(_strip_prefix(full.split(), prefix))
        train_exact.setdefault(norm, source)
        train_exact.setdefault(full, source)
        train_texts.append(f" {full} ")
        train_sources.append(source)
        for gram in _ngrams(norm.split(), cfg.ngram) - template:
            train_gram_source.setdefault(gram, source)

    joined = "\n".join(train_texts)
    exact, ngram, examples = 0, 0, []
    for (source, text), words, grams in zip(heldout_prompts, heldout_words, heldout_grams):
        match = train_exact.get(" ".join(words)) or train_exact.get(normalise(text))
        kind = "exact"
        if match is None and SHORT_MIN_WORDS <= len(normalise(text).split()) < cfg.ngram:
            match, kind = _contained(f" {normalise(text)} ", joined, train_sources), "whole prompt"
        if match is None:
            shared = next((gram for gram in grams - template if gram in train_gram_source), None)
            match, kind = (train_gram_source[shared], f"{cfg.ngram}-gram") if shared else (None, "")
        if match is None:
            continue
        exact += kind == "exact"
        ngram += kind != "exact"
        examples.append({"heldout": source, "train": match, "kind": kind, "text": text[:200]})
    fraction = (exact + ngram) / max(len(heldout_prompts), 1)
    report = LeakageReport(len(train_prompts), len(heldout_prompts), exact, ngram, cfg.ngram, fraction, examples)
    if fraction > cfg.max_overlap_fraction:
        listed = "; ".join(f"{e['heldout']} ~ {e['train']} ({e['kind']})" for e in examples[:10])
        raise LeakageError(
            f"{exact + ngram} of {len(heldout_prompts)} held-out prompts overlap with training prompts "
            f"({fraction:.1%} > eval.leakage.max_overlap_fraction={cfg.max_overlap_fraction:.1%}): {listed}"
        )
    return report
