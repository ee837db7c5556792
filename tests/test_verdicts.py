"""Three-state verdicts on constructed score vectors: the interval decides, not the point estimate."""

from __future__ import annotations

import pytest

from harness.verdicts import (
    cheaper_verdict,
    finetuning_verdict,
    holm_adjust,
    min_score_verdict,
    paired_verdict,
)


def scores(right: int, n: int) -> list[float]:
    return [1.0] * right + [0.0] * (n - right)


def test_min_score_meets_only_when_the_lower_bound_clears_it():
    # 0.800 on 100 examples has a Wilson interval [0.711, 0.867]: the "meets" was inconclusive.
    verdict = min_score_verdict(scores(80, 100), 0.8)
    assert verdict.state == "inconclusive"
    assert verdict.ci_low == pytest.approx(0.711, abs=1e-3) and verdict.ci_high == pytest.approx(0.867, abs=1e-3)
    assert verdict.examples_to_decide is None and "no eval set size" in verdict.text
    meets = min_score_verdict(scores(190, 200), 0.8)
    assert meets.state == "meets" and meets.ci_low >= 0.8
    below = min_score_verdict(scores(60, 100), 0.8)
    assert below.state == "below" and below.ci_high < 0.8
    close = min_score_verdict(scores(85, 100), 0.8)
    assert close.state == "inconclusive" and close.examples_to_decide == 196  # 1.96^2 * .85 * .15 / .05^2
    assert "Wilson" in close.method


def test_paired_verdict_three_states():
    base = scores(50, 100)
    better = [1.0] * 70 + [0.0] * 30  # fixes 20, breaks none
    assert paired_verdict("q", "A", base, "B", better).state == "better"
    assert paired_verdict("q", "B", better, "A", base).state == "worse"
    # 7 wins / 6 losses (the r=4 vs r=16): not distinguishable.
    a = [1.0] * 6 + [0.0] * 7 + [1.0] * 60 + [0.0] * 27
    b = [0.0] * 6 + [1.0] * 7 + [1.0] * 60 + [0.0] * 27
    verdict = paired_verdict("best_vs_runner_up", "r=4", a, "r=16", b)
    assert verdict.state == "inconclusive" and verdict.ci_low < 0 < verdict.ci_high
    assert verdict.examples_to_decide > 100 and "McNemar exact test" in verdict.method


def test_holm_adjustment_can_turn_a_verdict_inconclusive():
    a = scores(50, 100)
    b = [1.0] * 50 + [1.0] * 8 + [0.0] * 42  # 8 wins, 0 losses: p = 2 * 0.5**8 = 0.0078
    raw = paired_verdict("q", "A", a, "B", b)
    assert raw.state == "better"
    # Eight comparisons of that strength: Holm multiplies the smallest by 8 -> 0.0625, no longer below 0.05.
    adjusted = holm_adjust({f"c{i}": raw.p_value for i in range(8)})
    assert adjusted["c0"] == pytest.approx(0.0625)
    verdict = paired_verdict("q", "A", a, "B", b, p_adjusted=0.06)
    assert verdict.state == "inconclusive" and "Holm-adjusted 0.06" in verdict.text


def test_finetuning_needed_three_states():
    adapter = scores(90, 100)
    assert finetuning_verdict(scores(95, 100), adapter, 0.8).state == "no"
    low_prompt = scores(40, 100)
    assert finetuning_verdict(low_prompt, adapter, 0.8).state == "yes"
    # Prompting below min_score, adapter not distinguishable from it: inconclusive.
    assert finetuning_verdict(scores(70, 100), scores(71, 100), 0.8).state == "inconclusive"


def test_cheaper_configuration_is_recommended_when_not_distinguishable():
    best = [0.0] * 6 + [1.0] * 7 + [1.0] * 60 + [0.0] * 27  # 67/100
    cheaper = [1.0] * 6 + [0.0] * 7 + [1.0] * 60 + [0.0] * 27  # 66/100
    verdict = cheaper_verdict("r=16", best, "r=4", cheaper, margin=0.05)
    assert verdict.state == "cheaper" and "recommend r=4" in verdict.text and "not shown equivalent" in verdict.text
    identical_but_one = cheaper_verdict("r=16", scores(80, 400), "r=4", scores(80, 400), margin=0.05)
    assert identical_but_one.state == "cheaper" and "equivalent within ±0.05" in identical_but_one.text
    clearly_better = cheaper_verdict("r=16", [1.0] * 70 + [0.0] * 30, "r=4", scores(50, 100), margin=0.05)
    assert clearly_better.state == "best"


def _judged(number: int, params: dict, selection: list[float], reporting: list[float], prompt: list[float]):
    """(trial, selection results, reporting results) with just what harness.reporting.decide reads."""
    from types import SimpleNamespace as NS

    from harness.records import ScoreSummary

    def record(values, split):
        mean = sum(values) / len(values)
        return NS(final_stage=NS(heldout=NS(scores=values)), final=NS(heldout=ScoreSummary(mean, 0.0, 0.0, 1.0,
                  len(values))), eval_set=NS(min_score=0.8, split=split), run_dir=f"t/{number}/{split}",
                  baselines=NS(prompt_baseline=NS(scores=prompt), zero_shot=None))

    return NS(number=number, params=params), record(selection, "selection"), record(reporting, "reporting")


def test_decide_recommends_the_cheaper_trial_and_judges_it_on_the_reporting_split():
    from harness.reporting import decide

    prompt = scores(40, 100)
    best = _judged(2, {"lora_r": 16}, scores(95, 100), [0.0] * 6 + [1.0] * 7 + [1.0] * 70 + [0.0] * 17, prompt)
    cheap = _judged(1, {"lora_r": 4}, scores(90, 100), [1.0] * 6 + [0.0] * 7 + [1.0] * 70 + [0.0] * 17, prompt)
    verdicts = decide({2: best, 1: cheap}, best=2, runner_up=1, cheaper=1, margin=0.05)
    assert verdicts.best == 2 and verdicts.recommended == 1
    states = {v.question: v.state for v in verdicts.verdicts}
    assert states == {"min_score": "inconclusive", "finetuning_needed": "yes", "best_vs_runner_up": "inconclusive",
                      "cheaper_alternative": "cheaper"}
    assert verdicts.scores[0].number == 2 and verdicts.scores[0].optimism_gap == pytest.approx(0.95 - 0.77)
    assert "Holm over the 2 comparisons" in verdicts.correction
    assert all(v.p_adjusted is not None for v in verdicts.verdicts if v.question != "finetuning_needed"
               and v.question != "min_score")
