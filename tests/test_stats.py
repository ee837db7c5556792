"""Error bars and paired comparisons on hand-checkable score lists."""

import math
import time

import numpy as np
import pytest

from harness.stats import (
    PairedComparison,
    compare_paired,
    equivalence_test,
    estimate,
    examples_to_exclude,
    holm,
    mcnemar,
    mcnemar_exact_interval,
    paired_bootstrap,
    paired_examples_to_decide,
    paired_mde,
)

# --- estimate ------------------------------------------------------------------------------------


def test_estimate_mean_and_stderr_match_hand_computation():
    scores = [0.2, 0.4, 0.6, 0.8]
    result = estimate(scores)
    # mean 0.5; deviations -0.3, -0.1, 0.1, 0.3 -> sum of squares 0.2; var (ddof=1) 0.2/3
    assert result.mean == pytest.approx(0.5)
    assert result.stderr == pytest.approx(math.sqrt(0.2 / 3) / 2)
    assert result.n == 4
    # t interval, df=3: t_0.975 = 3.182
    half_width = 3.182446 * math.sqrt(0.2 / 3) / 2
    assert result.ci_low == pytest.approx(max(0.5 - half_width, 0.0), abs=1e-5)
    assert result.ci_high == pytest.approx(min(0.5 + half_width, 1.0), abs=1e-5)


def test_estimate_wilson_interval_for_binary_scores():
    scores = [1] * 7 + [0] * 3
    result = estimate(scores)
    assert result.mean == pytest.approx(0.7)
    # Wilson 95% for 7/10: (0.3968, 0.8922)
    assert result.ci_low == pytest.approx(0.3968, abs=1e-3)
    assert result.ci_high == pytest.approx(0.8922, abs=1e-3)


@pytest.mark.parametrize("scores", [[1] * 10, [0] * 10, [1], [0, 1]])
def test_wilson_interval_contains_p_and_stays_in_unit_interval(scores):
    result = estimate(scores)
    assert 0.0 <= result.ci_low <= result.mean <= result.ci_high <= 1.0
    assert result.ci_high > result.ci_low  # even all-correct gets a non-zero width


def test_estimate_clips_partial_credit_interval_to_unit_interval():
    result = estimate([0.95, 1.0, 1.0, 0.9, 1.0])
    assert result.ci_high == 1.0
    assert result.ci_low < result.mean


def test_estimate_single_score_has_zero_stderr():
    result = estimate([0.5])
    assert (result.stderr, result.ci_low, result.ci_high) == (0.0, 0.5, 0.5)


def test_estimate_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        estimate([])
    with pytest.raises(ValueError, match="NaN"):
        estimate([0.5, float("nan")])


# --- paired bootstrap ----------------------------------------------------------------------------


def partial_credit_scores(n, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 0.8, size=n)


def test_paired_bootstrap_finds_no_difference_between_identical_runs():
    a = partial_credit_scores(100)
    result = paired_bootstrap(a, a.copy())
    assert result.delta == 0.0
    assert result.p_value == 1.0
    assert not result.significant
    assert result.ci_low <= 0.0 <= result.ci_high
    assert (result.wins, result.losses, result.ties) == (0, 0, 100)
    assert result.verdict().startswith("not distinguishable at 95%")


def test_paired_bootstrap_detects_a_planted_improvement():
    a = partial_credit_scores(200)
    result = paired_bootstrap(a, a + 0.2)
    assert result.method == "paired_bootstrap"
    assert result.delta == pytest.approx(0.2)
    assert result.significant
    assert result.p_value < 0.001
    assert result.ci_low == pytest.approx(0.2) and result.ci_high == pytest.approx(0.2)
    assert result.wins == 200
    assert result.verdict().startswith("B is better than A by +20.0 points")


def test_paired_bootstrap_noisy_difference_has_interval_around_delta():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.0, 1.0, size=300)
    b = np.clip(a - 0.1 + rng.normal(0.0, 0.1, size=300), 0.0, 1.0)
    result = paired_bootstrap(a, b)
    assert result.ci_low < result.delta < result.ci_high < 0.0
    assert result.significant
    assert "worse" in result.verdict()


def test_paired_bootstrap_small_noisy_difference_is_not_significant():
    rng = np.random.default_rng(4)
    a = rng.uniform(0.0, 1.0, size=30)
    b = np.clip(a + rng.normal(0.0, 0.3, size=30), 0.0, 1.0)
    b += 0.01 - (b.mean() - a.mean())  # delta of one point, buried in noise
    result = paired_bootstrap(a, b)
    assert not result.significant
    assert result.ci_low < 0.0 < result.ci_high


def test_paired_bootstrap_is_deterministic_with_the_seed():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=50), rng.uniform(size=50)
    first, again, other_seed = (paired_bootstrap(a, b, seed=seed) for seed in (7, 7, 8))
    assert first == again
    assert (other_seed.ci_low, other_seed.ci_high) != (first.ci_low, first.ci_high)


def test_paired_bootstrap_10k_resamples_of_1000_examples_is_fast():
    rng = np.random.default_rng(6)
    a, b = rng.uniform(size=1000), rng.uniform(size=1000)
    start = time.perf_counter()
    paired_bootstrap(a, b, n_resamples=10_000)
    assert time.perf_counter() - start < 2.0  # well under a second on a laptop; slack for busy CI


# --- McNemar -------------------------------------------------------------------------------------


def test_mcnemar_detects_a_planted_improvement_of_30_examples():
    a = np.array([1] * 50 + [0] * 150)
    b = a.copy()
    b[50:80] = 1  # B fixes 30 examples A got wrong and breaks none
    result = mcnemar(a, b)
    assert (result.wins, result.losses, result.ties) == (30, 0, 170)
    assert result.p_value == pytest.approx(2 * 0.5**30)
    assert result.significant
    assert result.delta == pytest.approx(0.15)
    # Exact conditional interval: given 30 discordant pairs all won, the difference is at most 30/200.
    assert 0.0 < result.ci_low < 0.15 and result.ci_high == pytest.approx(0.15)
    assert "McNemar" in result.verdict() and "better" in result.verdict()


def test_mcnemar_identical_runs_give_p_one():
    a = [1, 0, 1, 1, 0]
    result = mcnemar(a, list(a))
    assert result.p_value == 1.0
    assert not result.significant
    assert result.delta == 0.0


def test_mcnemar_balanced_discordance_is_not_significant():
    a = [1] * 10 + [0] * 10 + [1] * 20
    b = [0] * 10 + [1] * 10 + [1] * 20
    result = mcnemar(a, b)
    assert (result.wins, result.losses) == (10, 10)
    assert result.p_value == pytest.approx(1.0)


def test_mcnemar_rejects_partial_credit():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5, 1.0], [1.0, 1.0])


# --- compare_paired and shared checks ------------------------------------------------------------


def test_compare_paired_picks_the_test_from_the_scores():
    assert compare_paired([1, 0, 1], [1, 1, 1]).method == "mcnemar"
    assert compare_paired([1, 0.5, 1], [1, 1, 1]).method == "paired_bootstrap"


@pytest.mark.parametrize("compare", [compare_paired, paired_bootstrap, mcnemar])
def test_mismatched_lengths_raise_with_both_lengths(compare):
    with pytest.raises(ValueError, match=r"len\(a\)=3.*len\(b\)=2"):
        compare([1, 0, 1], [1, 0])


def test_verdict_wording():
    comparison = PairedComparison(
        method="mcnemar", n=100, mean_a=0.5, mean_b=0.62, delta=0.12, ci_low=0.051, ci_high=0.189,
        p_value=0.002, wins=14, losses=2, ties=84, significant=True,
    )
    expected = "B is better than A by +12.0 points (95% exact conditional CI +5.1 to +18.9, McNemar p=0.002)"
    assert comparison.verdict() == expected


# --- consistent intervals, equivalence, multiplicity, sample sizes -------------------------------------------


def test_mcnemar_interval_agrees_with_the_exact_test_in_the_issue_case():
    # 5 wins, 0 losses in 100: exact p = 2 * 0.5**5 = 0.0625, not significant; the Wald interval was +0.7 to +9.3
    # points and excluded 0. The exact conditional interval must include it.
    a = [0] * 5 + [1] * 50 + [0] * 45
    b = [1] * 5 + [1] * 50 + [0] * 45
    result = mcnemar(a, b)
    assert result.p_value == pytest.approx(0.0625) and not result.significant
    assert result.ci_low < 0.0 < result.ci_high
    # Clopper-Pearson lower limit for 5/5 at 95%: 0.025 ** (1/5) = 0.47818; the difference is (5/100)(2q - 1).
    assert result.ci_low == pytest.approx(0.05 * (2 * 0.025 ** 0.2 - 1), abs=1e-9)
    assert result.ci_high == pytest.approx(0.05)
    assert "exact conditional" in result.interval_method


def test_mcnemar_estimate_lies_in_its_interval_as_printed():
    # The default sft_dpo sweep's case: 2 better, 0 worse of 160, scores 0.7875 -> 0.800. mean(b) - mean(a) is
    # 0.012500000000000067 and printed +1.3 beside an upper bound of exactly 0.0125 printed +1.2.
    a = [0] * 2 + [1] * 126 + [0] * 32
    b = [1] * 2 + [1] * 126 + [0] * 32
    result = mcnemar(a, b)
    assert result.delta == result.ci_high == 2 / 160
    assert f"{100 * result.delta:+.1f}" == f"{100 * result.ci_high:+.1f}"
    for wins, losses in ((0, 3), (7, 2), (1, 0)):
        a = [0] * wins + [1] * losses + [1] * 20
        b = [1] * wins + [0] * losses + [1] * 20
        result = mcnemar(a, b)
        assert result.ci_low <= result.delta <= result.ci_high and result.delta == (wins - losses) / len(a)


def test_mcnemar_interval_excludes_zero_exactly_when_the_test_rejects():
    from scipy.stats import binomtest

    for wins in range(16):
        for losses in range(16):
            if wins + losses == 0:
                continue
            low, high = mcnemar_exact_interval(wins, losses, 100)
            rejects = binomtest(wins, wins + losses, 0.5).pvalue < 0.05
            assert (low > 0 or high < 0) == rejects, (wins, losses, low, high)


def test_mcnemar_interval_matches_clopper_pearson_from_scipy():
    from scipy.stats import binomtest

    ci = binomtest(7, 10).proportion_ci(confidence_level=0.95, method="exact")
    low, high = mcnemar_exact_interval(7, 3, 40)
    assert low == pytest.approx(10 / 40 * (2 * ci.low - 1)) and high == pytest.approx(10 / 40 * (2 * ci.high - 1))


def test_holm_adjustment_worked_example():
    # m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_tost_equivalence_on_paired_binary_scores():
    same = [1] * 80 + [0] * 20
    one_flip_each_way = [0] + [1] * 79 + [1] + [0] * 19
    result = equivalence_test(same * 4, one_flip_each_way * 4, margin=0.05)
    assert result.equivalent and -0.05 < result.ci_low < 0 < result.ci_high < 0.05
    assert "TOST: 90% exact conditional" in result.method
    far = [1] * 70 + [0] * 30
    assert not equivalence_test(same, far, margin=0.05).equivalent


def test_examples_needed_to_decide():
    # p = 0.8 vs min_score 0.75: 1.96^2 * 0.16 / 0.05^2 = 245.9 -> 246 examples.
    assert examples_to_exclude(0.8, 0.75) == 246
    assert examples_to_exclude(0.8, 0.8) is None
    # delta 0.05 with per-example variance 0.05 - 0.05^2 = 0.0475: 1.96^2 * 0.0475 / 0.0025 = 73.0 -> 73
    a = [0] * 5 + [1] * 95
    b = [1] * 5 + [1] * 95
    assert paired_examples_to_decide(a, b) == math.ceil(1.959964**2 * 0.0475 / 0.0025)


# --- paired_mde -------------------------------------------------------------------------------------


def test_paired_mde_matches_the_normal_approximation_and_shrinks_with_n():
    # 5 better, 0 worse of 160: sd of the differences sqrt(5/160 - (5/160)^2); (1.960 + 0.842) * sd / sqrt(160)
    reference, candidate = [0.0] * 160, [1.0] * 5 + [0.0] * 155
    expected = 2.8016 * math.sqrt((5 / 160 - (5 / 160) ** 2) / 160)
    assert paired_mde(reference, candidate) == pytest.approx(expected, rel=1e-3)
    assert paired_mde(reference * 4, candidate * 4) == pytest.approx(expected / 2, rel=1e-3)
    # no discordant pair at all: floored at one discordant example, never 0
    assert paired_mde([1.0] * 160, [1.0] * 160) > 0
