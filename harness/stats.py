"""Error bars for eval scores and paired comparisons between two runs on the same eval set.

The report and the CI regression gate call these on per-example grader scores (in [0, 1]):

    heldout = estimate(scores_b)                    # mean with stderr and a 95% interval
    comparison = compare_paired(scores_a, scores_b) # McNemar for 0/1 scores, else paired bootstrap
    print(comparison.verdict())                     # "B is better than A by +12.0 points (...)"

Both runs must be scored on the same examples in the same order: a paired test is far more sensitive
than comparing two independent means, because per-example difficulty cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

# Rows of resampled indices generated at once, so 10k resamples of a large eval set stay small in memory.
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


@dataclass
class Estimate:
    """A mean score with its uncertainty."""

    mean: float
    stderr: float  # sample std (ddof=1) / sqrt(n); 0 when n < 2
    ci_low: float  # Wilson interval for 0/1 scores, t interval otherwise
    ci_high: float
    n: int


def estimate(scores: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean of per-example scores with a `confidence` interval.

    0/1 scores get the Wilson score interval (sensible near 0 and 1 and for small n); other scores get
    a Student-t interval, clipped to [0, 1] when every score lies in [0, 1]. With a single non-binary
    score the interval collapses to the mean: there is no spread to estimate from.
    """
    values = _as_scores(scores, "scores")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n >= 2 else 0.0
    if _is_binary(values):
        ci_low, ci_high = _wilson_interval(mean, n, confidence)
    elif n >= 2:
        half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * stderr
        ci_low, ci_high = mean - half_width, mean + half_width
        if values.min() >= 0.0 and values.max() <= 1.0:
            ci_low, ci_high = max(ci_low, 0.0), min(ci_high, 1.0)
    else:
        ci_low, ci_high = mean, mean
    return Estimate(mean=mean, stderr=stderr, ci_low=ci_low, ci_high=ci_high, n=n)


@dataclass
class PairedComparison:
    """Run B against run A on the same examples."""

    method: str  # "mcnemar" or "paired_bootstrap"
    n: int  # examples compared
    mean_a: float
    mean_b: float
    delta: float  # mean_b - mean_a
    ci_low: float  # (1 - alpha) interval of delta: bootstrap percentile, or exact conditional for mcnemar
    ci_high: float
    p_value: float  # two-sided, null hypothesis: no difference between A and B
    wins: int  # examples where b > a
    losses: int  # examples where b < a
    ties: int  # examples where b == a
    significant: bool  # p_value < alpha
    alpha: float = 0.05  # significance level the comparison was made at

    @property
    def interval_method(self) -> str:
        return {"mcnemar": "exact conditional (Clopper-Pearson on the discordant pairs)",
                "paired_bootstrap": "paired bootstrap percentile"}[self.method]

    def verdict(self) -> str:
        """One plain-English line for reports, with the delta in points (scores x 100)."""
        level = f"{100 * (1 - self.alpha):g}%"
        test = {"mcnemar": "McNemar", "paired_bootstrap": "paired bootstrap"}[self.method]
        kind = {"mcnemar": "exact conditional", "paired_bootstrap": "bootstrap percentile"}[self.method]
        interval = f"{level} {kind} CI {100 * self.ci_low:+.1f} to {100 * self.ci_high:+.1f}"
        p_text = "p<0.001" if self.p_value < 0.001 else f"p={self.p_value:.2g}"
        if not self.significant:
            return (
                f"not distinguishable at {level} (delta {100 * self.delta:+.1f} points, "
                f"{interval}, {test} {p_text})"
            )
        direction = "better" if self.delta > 0 else "worse"
        return f"B is {direction} than A by {100 * self.delta:+.1f} points ({interval}, {test} {p_text})"


def compare_paired(
    a: Sequence[float], b: Sequence[float], alpha: float = 0.05, seed: int = 0
) -> PairedComparison:
    """McNemar's test when every score is 0/1, otherwise the paired bootstrap."""
    scores_a, scores_b = _as_paired(a, b)
    if _is_binary(scores_a) and _is_binary(scores_b):
        return mcnemar(scores_a, scores_b, alpha=alpha)
    return paired_bootstrap(scores_a, scores_b, seed=seed, alpha=alpha)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedComparison:
    """Resample examples (keeping each example's a/b pair together) to get the spread of the delta.

    Interval: the percentile interval of the resampled deltas. p-value: two-sided, from the resampled
    deltas centred on 0 to mimic the null of no difference, i.e. the share of |delta* - delta| that
    reach |delta|, with the +1 correction ((count + 1) / (n_resamples + 1)) so that it is never 0.
    Deterministic for a given seed.
    """
    scores_a, scores_b = _as_paired(a, b)
    _check_alpha(alpha)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    differences = scores_b - scores_a
    delta = float(differences.mean())

    resampled_deltas = _bootstrap_means(differences, n_resamples, seed)
    ci_low, ci_high = np.quantile(resampled_deltas, [alpha / 2, 1 - alpha / 2])
    # The 1e-12 absorbs rounding in the means, e.g. identical runs whose delta comes out as 1e-17.
    centred = np.abs(resampled_deltas - delta)
    as_extreme = int(np.count_nonzero(centred >= abs(delta) - 1e-12))
    p_value = min(1.0, (as_extreme + 1) / (n_resamples + 1))
    return _comparison("paired_bootstrap", scores_a, scores_b, float(ci_low), float(ci_high), p_value, alpha)


def _bootstrap_means(differences: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the per-example differences; deterministic per seed."""
    n = len(differences)
    rng = np.random.default_rng(seed)
    resampled = np.empty(n_resamples)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        resampled[start:stop] = differences[indices].mean(axis=1)
    return resampled


def mcnemar(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> PairedComparison:
    """Exact McNemar test for 0/1 scores: a two-sided binomial test on the discordant pairs.

    The interval of the delta is the exact conditional one (`mcnemar_exact_interval`), which excludes 0 exactly
    when the exact test rejects at `alpha`: the Wald interval used before could exclude 0 while the test did not
    reject (5 wins, 0 losses in 100: p=0.0625 but Wald +0.7 to +9.3 points).
    """
    scores_a, scores_b = _as_paired(a, b)
    _check_alpha(alpha)
    if not (_is_binary(scores_a) and _is_binary(scores_b)):
        raise ValueError("mcnemar needs 0/1 scores; use paired_bootstrap for partial credit")
    n = len(scores_a)
    wins = int(np.count_nonzero(scores_b > scores_a))
    losses = int(np.count_nonzero(scores_b < scores_a))
    discordant = wins + losses
    p_value = float(scipy_stats.binomtest(wins, discordant, 0.5).pvalue) if discordant else 1.0
    ci_low, ci_high = mcnemar_exact_interval(wins, losses, n, alpha)
    # (wins - losses) / n, not mean(b) - mean(a): the same number without the subtraction's rounding, so that with no
    # losses the estimate equals the interval's upper bound exactly (0.8 - 0.7875 printed +1.3 beside a bound of +1.2)
    return _comparison("mcnemar", scores_a, scores_b, ci_low, ci_high, min(p_value, 1.0), alpha,
                       delta=(wins - losses) / n)


def mcnemar_exact_interval(wins: int, losses: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact conditional (1 - alpha) interval of the paired difference (wins - losses) / n.

    Given d = wins + losses discordant pairs, wins ~ Binomial(d, q) and the difference is (d / n)(2q - 1); the
    Clopper-Pearson interval of q maps to the interval of the difference. It excludes 0 exactly when the
    Clopper-Pearson interval excludes q = 1/2, i.e. when the exact two-sided binomial test rejects at alpha: the
    interval and McNemar's exact test never disagree. With no discordant pair the difference is bounded by the
    Clopper-Pearson upper limit of the discordance rate (0 of n): [-u, +u].
    """
    discordant = wins + losses
    if discordant == 0:
        upper = 1.0 - (alpha / 2) ** (1.0 / n)
        return -upper, upper
    q_low = float(scipy_stats.beta.ppf(alpha / 2, wins, losses + 1)) if wins > 0 else 0.0
    q_high = float(scipy_stats.beta.ppf(1 - alpha / 2, wins + 1, losses)) if losses > 0 else 1.0
    scale = discordant / n
    return scale * (2 * q_low - 1), scale * (2 * q_high - 1)


def paired_interval(a: Sequence[float], b: Sequence[float], alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(1 - alpha) interval of mean(b - a): exact conditional for 0/1 scores, paired bootstrap percentile otherwise."""
    comparison = compare_paired(a, b, alpha=alpha, seed=seed)
    return comparison.ci_low, comparison.ci_high


@dataclass
class Equivalence:
    """TOST: is |mean(b - a)| < margin? Two one-sided tests at alpha, i.e. the (1 - 2 alpha) interval inside
    (-margin, +margin)."""

    equivalent: bool
    margin: float
    ci_low: float  # the (1 - 2 alpha) interval of the difference
    ci_high: float
    alpha: float
    method: str


def equivalence_test(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05,
                     seed: int = 0) -> Equivalence:
    """Two one-sided tests (TOST) of |mean(b) - mean(a)| < margin on paired scores."""
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    comparison = compare_paired(a, b, alpha=2 * alpha, seed=seed)
    interval = "exact conditional" if comparison.method == "mcnemar" else "paired bootstrap percentile"
    return Equivalence(
        equivalent=-margin < comparison.ci_low and comparison.ci_high < margin, margin=margin,
        ci_low=comparison.ci_low, ci_high=comparison.ci_high, alpha=alpha,
        method=f"TOST: {100 * (1 - 2 * alpha):g}% {interval} interval within ±{margin:g}",
    )


@dataclass
class NonInferiority:
    """Is the candidate no worse than the reference by more than `margin`? Two one-sided tests of
    delta = mean(candidate) - mean(reference) against -margin, on the same examples."""

    method: str  # "tango_score" (0/1 scores) or "paired_bootstrap"
    n: int
    mean_reference: float
    mean_candidate: float
    delta: float
    margin: float
    ci_low: float  # one-sided (1 - alpha) bounds of delta: together the (1 - 2 alpha) interval
    ci_high: float
    p_noninferior: float  # H0: delta <= -margin; small = shown no worse than the margin
    p_worse: float  # H0: delta >= -margin; small = shown worse than the margin
    mde: float  # the smallest true drop (>= margin) this test calls "worse" with 80% power at this n
    wins: int  # examples where the candidate scores higher
    losses: int
    alpha: float

    @property
    def method_text(self) -> str:
        return {"tango_score": "Tango score",
                "paired_bootstrap": "paired bootstrap percentile"}[self.method]


def paired_mde(reference: Sequence[float], candidate: Sequence[float], alpha: float = 0.05,
               power: float = 0.8) -> float:
    """The smallest true paired difference a two-sided test at `alpha` detects with `power` on these n examples.

    Normal approximation, (z_{1-alpha/2} + z_power) * sd / sqrt(n), with the sd of the per-example differences
    floored at one discordant example (as `noninferiority`'s minimum detectable effect)."""
    scores_r, scores_c = _as_paired(reference, candidate)
    _check_alpha(alpha)
    n = len(scores_r)
    differences = scores_c - scores_r
    variance = max(float(differences.var()), 1.0 / n**2)
    z = float(scipy_stats.norm.ppf(1 - alpha / 2)) + float(scipy_stats.norm.ppf(power))
    return z * math.sqrt(variance / n)


def noninferiority(reference: Sequence[float], candidate: Sequence[float], margin: float, alpha: float = 0.05,
                   seed: int = 0, power: float = 0.8, n_resamples: int = 10_000) -> NonInferiority:
    """Paired non-inferiority of `candidate` to `reference` with a margin.

    0/1 scores: Tango's score test for a difference of paired proportions (the constrained maximum likelihood
    estimate of the discordant cells under each null; its interval is the test inverted, so interval and
    p-values never disagree, and it stays defined when no pair is discordant). Partial-credit scores: the paired
    bootstrap, with p-values read from the same resampled deltas as its percentile interval.
    The minimum detectable effect is a normal approximation: margin + (z_{1-alpha} + z_power) * sd / sqrt(n), the
    sd of the per-example differences floored at one discordant example.
    """
    scores_r, scores_c = _as_paired(reference, candidate)
    _check_alpha(alpha)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"non-inferiority margin must be in [0, 1), got {margin}")
    n = len(scores_r)
    differences = scores_c - scores_r
    delta = float(differences.mean())
    wins, losses = int(np.count_nonzero(differences > 0)), int(np.count_nonzero(differences < 0))
    z_alpha = float(scipy_stats.norm.ppf(1 - alpha))
    if _is_binary(scores_r) and _is_binary(scores_c):
        method = "tango_score"
        z_at_margin = _tango_z(wins, losses, n, -margin)
        p_noninferior = float(scipy_stats.norm.sf(z_at_margin))
        p_worse = float(scipy_stats.norm.cdf(z_at_margin))
        ci_low, ci_high = _tango_bounds(wins, losses, n, delta, z_alpha)
        variance = max(max(wins + losses, 1) / n - delta**2, 1.0 / n**2)
    else:
        method = "paired_bootstrap"
        resampled = _bootstrap_means(differences, n_resamples, seed)
        p_noninferior = (int(np.count_nonzero(resampled <= -margin)) + 1) / (n_resamples + 1)
        p_worse = (int(np.count_nonzero(resampled >= -margin)) + 1) / (n_resamples + 1)
        ci_low, ci_high = (float(q) for q in np.quantile(resampled, [alpha, 1 - alpha]))
        variance = max(float(differences.var()), 1.0 / n**2)
    mde = margin + (z_alpha + float(scipy_stats.norm.ppf(power))) * math.sqrt(variance / n)
    return NonInferiority(method=method, n=n, mean_reference=float(scores_r.mean()),
                          mean_candidate=float(scores_c.mean()), delta=delta, margin=margin, ci_low=ci_low,
                          ci_high=ci_high, p_noninferior=min(p_noninferior, 1.0), p_worse=min(p_worse, 1.0),
                          mde=mde, wins=wins, losses=losses, alpha=alpha)


def _tango_z(wins: int, losses: int, n: int, delta0: float) -> float:
    """Tango's (1998) score statistic for H0: p_win - p_loss = delta0 (wins/losses: discordant pairs of n)."""
    concordant = n - wins - losses
    # Constrained MLE of p_loss = t (p_win = t + delta0): the root of 2n t^2 + b t + c = 0 in the valid range.
    b = -(wins * (1 - delta0) + losses * (1 - 3 * delta0) - 2 * concordant * delta0)
    c = -losses * delta0 * (1 - delta0)
    t = (-b + math.sqrt(max(b * b - 8 * n * c, 0.0))) / (4 * n)
    t = min(max(t, max(0.0, -delta0)), (1 - delta0) / 2)
    variance = (2 * t + delta0 - delta0**2) / n
    observed = (wins - losses) / n - delta0
    if variance <= 0:
        return 0.0 if observed == 0 else math.copysign(math.inf, observed)
    return observed / math.sqrt(variance)


def _tango_bounds(wins: int, losses: int, n: int, delta: float, z: float) -> tuple[float, float]:
    """The one-sided bounds {delta0: Z(delta0) <= z} and {delta0: Z(delta0) >= -z}: the score test inverted."""
    from scipy.optimize import brentq

    edge = 1 - 1e-9
    low = -1.0 if _tango_z(wins, losses, n, -edge) <= z else brentq(
        lambda d0: _tango_z(wins, losses, n, d0) - z, -edge, delta, xtol=1e-10)
    high = 1.0 if _tango_z(wins, losses, n, edge) >= -z else brentq(
        lambda d0: _tango_z(wins, losses, n, d0) + z, delta, edge, xtol=1e-10)
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at alpha when each is compared with alpha).

    Sorted ascending, the i-th smallest (0-based) is multiplied by (m - i), made non-decreasing, capped at 1.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def examples_to_exclude(proportion: float, threshold: float, confidence: float = 0.95) -> int | None:
    """Examples at which a (normal-approximation) interval around `proportion` would no longer contain
    `threshold`, if the proportion stayed the same: the size that decides an inconclusive min_score verdict.
    None when proportion == threshold (no size decides it)."""
    gap = abs(proportion - threshold)
    if gap == 0:
        return None
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    variance = max(proportion * (1 - proportion), 1e-4)
    return math.ceil(z**2 * variance / gap**2)


def paired_examples_to_decide(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> int | None:
    """Examples at which the paired difference's interval would exclude 0 if the observed difference and its
    per-example spread stayed the same (normal approximation): the size that decides an inconclusive comparison.
    None when the observed difference is 0."""
    differences = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    delta = float(differences.mean())
    if delta == 0:
        return None
    z = float(scipy_stats.norm.ppf(1 - alpha / 2))
    variance = max(float(differences.var()), 1e-4)
    return math.ceil(z**2 * variance / delta**2)


# ---------------------------------------------------------------------------------------------------


def _comparison(
    method: str,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    ci_low: float,
    ci_high: float,
    p_value: float,
    alpha: float,
    delta: float | None = None,
) -> PairedComparison:
    mean_a, mean_b = float(scores_a.mean()), float(scores_b.mean())
    return PairedComparison(
        method=method,
        n=len(scores_a),
        mean_a=mean_a,
        mean_b=mean_b,
        delta=mean_b - mean_a if delta is None else delta,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        wins=int(np.count_nonzero(scores_b > scores_a)),
        losses=int(np.count_nonzero(scores_b < scores_a)),
        ties=int(np.count_nonzero(scores_b == scores_a)),
        significant=p_value < alpha,
        alpha=alpha,
    )


def _as_scores(scores: Sequence[float], name: str) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of per-example scores, got shape {values.shape}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty: no per-example scores")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return values


def _as_paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(
            f"paired comparison needs scores aligned by example: len(a)={len(a)} but len(b)={len(b)}"
        )
    return _as_scores(a, "a"), _as_scores(b, "b")


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0.0) | (values == 1.0)))


def _wilson_interval(proportion: float, n: int, confidence: float) -> tuple[float, float]:
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    denominator = 1 + z**2 / n
    centre = (proportion + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / n + z**2 / (4 * n**2)) / denominator
    # Exactly 0 (1) at p = 0 (1) in theory; min/max undo the rounding that would exclude p itself.
    return max(min(centre - half_width, proportion), 0.0), min(max(centre + half_width, proportion), 1.0)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
