"""Three-state verdicts that respect their error bars, computed on per-example scores of the reporting split.

    min_score_verdict(scores, 0.8)                      # meets | below | inconclusive (+ examples to decide)
    paired_verdict("best_vs_runner_up", "r=4", a, "r=16", b)   # better | worse | inconclusive (B vs A)
    finetuning_verdict(prompt_scores, adapter_scores, 0.8)     # yes | no | inconclusive
    cheaper_verdict("r=16", best, "r=4", cheaper, margin=0.05) # cheaper | best, and why

A point estimate on the right side of a threshold is not evidence: "meets" needs the interval's lower bound at
or above min_score, "below" its upper bound under it; anything else is "inconclusive", with the number of
examples that would decide it if the score stayed where it is. Paired comparisons use `harness.stats`
(McNemar's exact test and its exact conditional interval for 0/1 scores, the paired bootstrap otherwise);
when several comparisons feed one report, their p-values are Holm-adjusted (`holm_adjust`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from harness.records import Verdict
from harness.stats import (
    compare_paired,
    equivalence_test,
    estimate,
    examples_to_exclude,
    holm,
    paired_examples_to_decide,
)


def min_score_verdict(scores: Sequence[float], min_score: float, confidence: float = 0.95) -> Verdict:
    result = estimate(scores, confidence)
    binary = all(s in (0.0, 1.0) for s in scores)
    method = f"{100 * confidence:g}% {'Wilson score' if binary else 'Student t'} interval"
    interval = f"{result.mean:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}], n={result.n}"
    needed = None
    if result.ci_low >= min_score:
        state, why = "meets", f"the interval's lower bound {result.ci_low:.3f} >= min_score {min_score:g}"
    elif result.ci_high < min_score:
        state, why = "below", f"the interval's upper bound {result.ci_high:.3f} < min_score {min_score:g}"
    else:
        state = "inconclusive"
        needed = examples_to_exclude(result.mean, min_score, confidence)
        why = (f"the interval contains min_score {min_score:g}; "
               + (f"about {needed} examples would decide it if the score held" if needed else
                  "the score sits exactly on min_score: no eval set size decides it"))
    return Verdict(question="min_score", state=state, text=f"{state}: {interval} ({method}); {why}", method=method,
                   estimate=result.mean, ci_low=result.ci_low, ci_high=result.ci_high, n=result.n,
                   examples_to_decide=needed)


def paired_verdict(question: str, a_name: str, a: Sequence[float], b_name: str, b: Sequence[float],
                   alpha: float = 0.05, p_adjusted: float | None = None) -> Verdict:
    """B against A on the same examples: better (B > A), worse (B < A) or inconclusive, at `alpha` on the Holm-
    adjusted p-value when one is given (its interval is then the unadjusted one, and says so)."""
    comparison = compare_paired(a, b, alpha=alpha)
    p = comparison.p_value if p_adjusted is None else p_adjusted
    test = {"mcnemar": "McNemar exact test", "paired_bootstrap": "paired bootstrap"}[comparison.method]
    method = f"{test}; {100 * (1 - alpha):g}% {comparison.interval_method} interval"
    numbers = (f"{b_name} {comparison.mean_b:.3f} vs {a_name} {comparison.mean_a:.3f}: delta "
               f"{100 * comparison.delta:+.1f} points [{100 * comparison.ci_low:+.1f}, {100 * comparison.ci_high:+.1f}]"
               f", {comparison.wins} better / {comparison.losses} worse of {comparison.n}, p={comparison.p_value:.3g}"
               + ("" if p_adjusted is None else f" (Holm-adjusted {p_adjusted:.3g})"))
    needed = None
    if p < alpha:
        state = "better" if comparison.delta > 0 else "worse"
        why = f"{b_name} is {state} than {a_name}"
    else:
        state = "inconclusive"
        needed = paired_examples_to_decide(a, b, alpha)
        why = (f"not distinguishable at alpha {alpha:g}; "
               + (f"about {needed} examples would decide it if the difference held" if needed else
                  "no difference at all on these examples"))
    return Verdict(question=question, state=state, text=f"{state}: {numbers} ({method}); {why}", method=method,
                   estimate=comparison.delta, ci_low=comparison.ci_low, ci_high=comparison.ci_high, n=comparison.n,
                   p_value=comparison.p_value, p_adjusted=p_adjusted, examples_to_decide=needed)


def finetuning_verdict(prompt: Sequence[float], adapter: Sequence[float], min_score: float, alpha: float = 0.05,
                       p_adjusted: float | None = None) -> Verdict:
    """Was fine-tuning needed? no: prompting alone meets min_score; yes: prompting is below it and the adapter
    is better than prompting; inconclusive: anything else (said which part is undecided)."""
    prompting = min_score_verdict(prompt, min_score)
    versus = paired_verdict("finetuning_needed", "prompting", prompt, "adapter", adapter, alpha, p_adjusted)
    if prompting.state == "meets":
        state, why = "no", f"prompting alone meets min_score ({prompting.text})"
    elif prompting.state == "below" and versus.state == "better":
        state, why = "yes", f"prompting alone is below min_score and the adapter is better ({versus.text})"
    else:
        state = "inconclusive"
        why = f"prompting alone: {prompting.text}; adapter vs prompting: {versus.text}"
    return replace(versus, state=state, text=f"{state}: {why}")


def cheaper_verdict(best_name: str, best: Sequence[float], cheaper_name: str, cheaper: Sequence[float],
                    margin: float, alpha: float = 0.05, p_adjusted: float | None = None) -> Verdict:
    """Ship the cheaper configuration unless the best is distinguishably better; say whether the two are
    equivalent within `margin` (TOST) or merely not distinguishable (and what would decide it)."""
    versus = paired_verdict("cheaper_alternative", cheaper_name, cheaper, best_name, best, alpha, p_adjusted)
    if versus.state == "better":
        return replace(versus, state="best", text=f"best: {best_name} is distinguishably better than the cheaper "
                                                  f"{cheaper_name} ({versus.text})")
    tost = equivalence_test(cheaper, best, margin, alpha)
    if tost.equivalent:
        why = (f"equivalent within ±{margin:g} ({tost.method}: [{tost.ci_low:+.3f}, {tost.ci_high:+.3f}])")
    else:
        why = (f"not distinguishable, but not shown equivalent within ±{margin:g} ({tost.method}: "
               f"[{tost.ci_low:+.3f}, {tost.ci_high:+.3f}]); the cheaper one is recommended because the best "
               "has not earned its extra cost")
    return replace(versus, state="cheaper", method=f"{versus.method}; {tost.method}",
                   text=f"cheaper: recommend {cheaper_name} over {best_name}: {why}; {versus.text}")


def holm_adjust(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of the named comparisons that feed one report."""
    names = list(p_values)
    return dict(zip(names, holm([p_values[n] for n in names]), strict=True))
