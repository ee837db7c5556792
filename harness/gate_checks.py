"""The gate's decision rules: every check on the same examples, three outcomes each, no model needed.

    report = compare(baseline, candidate_results, GateSettings())   # a GateReport (harness.gate_report)

Two families of paired checks, named for what they compare, each a pair of one-sided tests of the candidate's
drop against a limit (`harness.stats.noninferiority`: Tango's score test for 0/1 scores, the paired bootstrap
for partial credit):
  forgetting/<task>      candidate vs the BASE MODEL on each regression benchmark, limit = its max_regression:
                         the rule the sweep's constraint applies (drop vs the base within max_regression)
  vs_baseline/heldout    candidate vs the BASELINE ADAPTER on the reporting split, limit = the margin
  vs_baseline/<task>     candidate vs the baseline adapter on each benchmark, limit = the margin
pass: shown no worse than the limit (p_noninferior < alpha); fail: shown worse than the limit (p_worse, Holm-
adjusted over every paired check, < alpha: the family-wise false-alarm rate stays <= alpha); inconclusive:
neither, with the minimum detectable drop at this n. And one check on the candidate alone:
  heldout_min_score      its 95% interval vs min_score: above = pass, below = fail, straddling = inconclusive
`GateSettings.inconclusive` (pass | fail) decides what an inconclusive check does to the verdict.
"""

from __future__ import annotations

from harness.gate_report import Check, GateReport, GateSettings, GateSide, WorseExample
from harness.records import GateBaseline, RunResults
from harness.stats import holm, noninferiority


class CannotCompareError(Exception):
    """Candidate and baseline cannot be compared (missing file, different eval set or base model, ...).

    `rows`: [what, baseline value, candidate value] for a side-by-side table of what differs."""

    def __init__(self, message: str, rows: list[list[str]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


def compare(baseline: GateBaseline, candidate: RunResults, settings: GateSettings) -> GateReport:
    """Decide every check for a candidate results record against a baseline record."""
    require_comparable(baseline, candidate)
    stage = candidate.final_stage
    base_rows, cand_rows = baseline.heldout.per_example, stage.heldout.per_example
    cand_scores = [r.score for r in cand_rows]
    margin = settings.margin if settings.margin is not None else baseline.config["eval"]["equivalence_margin"]

    # 1. The paired checks: (name, what is compared, reference scores, candidate scores, limit).
    paired = [(f"forgetting/{task}", f"{task} ({scores.metric}) vs the base model", scores.per_example,
               stage.regression[task].per_example, baseline.regression[task].max_regression)
              for task, scores in baseline.base_regression.items() if task in baseline.regression]
    paired.append(("vs_baseline/heldout", f"held-out ({baseline.eval_set.name}) vs the baseline adapter",
                   [r.score for r in base_rows], cand_scores, margin))
    paired += [(f"vs_baseline/{task}", f"{task} ({scores.metric}) vs the baseline adapter", scores.per_example,
                stage.regression[task].per_example, margin) for task, scores in baseline.regression.items()]
    tests = [noninferiority(ref, cand, limit, settings.alpha, settings.seed) for _, _, ref, cand, limit in paired]
    # 2. Holm over every paired check's "worse" p-value: more benchmarks are not more chances to fail on noise.
    adjusted = holm([t.p_worse for t in tests])
    checks = [_min_score_check(baseline, cand_scores)]
    checks += [_paired_check(name, title, test, p_holm, settings.alpha)
               for (name, title, *_), test, p_holm in zip(paired, tests, adjusted, strict=True)]
    correction = (f"Holm over the {len(tests)} paired checks' p-values for 'worse than the limit' "
                  f"(family-wise false-alarm rate <= {settings.alpha:g}); heldout_min_score is a 95% interval "
                  "on the candidate alone, outside that family")

    # 3. What else a reviewer should know.
    notes = []
    if candidate.adapter.hash == baseline.adapter.hash:
        notes.append("The candidate adapter is the baseline's adapter (same hash).")
    for task in sorted(set(stage.regression) - set(baseline.regression)):
        notes.append(f"Regression task {task} is not in the baseline: scored, not gated.")
    for task in sorted(set(baseline.regression) - set(baseline.base_regression)):
        notes.append(f"Regression task {task}: the baseline has no base-model score, no forgetting check.")
    versions = candidate.metrics.library_versions
    changed = sorted(k for k, v in baseline.library_versions.items() if versions.get(k) != v)
    if changed:
        notes.append("Library versions differ from the baseline's: " + ", ".join(
            f"{k} {baseline.library_versions[k]} -> {versions.get(k)}" for k in changed))
    worse = []
    if baseline.heldout.outputs_kept:
        changed_outputs = sum(b.output != c.output for b, c in zip(base_rows, cand_rows))
        notes.append(
            f"Held-out outputs that differ from the baseline's: {changed_outputs} of {len(base_rows)}.")
        worse = [WorseExample(source=c.source, baseline_score=b.score, candidate_score=c.score,
                              baseline_output=b.output, candidate_output=c.output)
                 for b, c in zip(base_rows, cand_rows) if c.score < b.score]

    verdict, reason = decide(checks, settings)
    return GateReport(
        verdict=verdict, reason=reason, checks=checks, eval_set=baseline.eval_set, model=baseline.model,
        baseline=GateSide(adapter_hash=baseline.adapter.hash,
                          origin=f"{baseline.created_from} ({baseline.created_at})"),
        candidate=GateSide(adapter_hash=candidate.adapter.hash, path=candidate.adapter.path),
        settings=settings, correction=correction, notes=notes, worse_examples=worse,
    )


def decide(checks: list[Check], settings: GateSettings) -> tuple[str, str]:
    """(verdict, the one-line reason): fail when a check decided "fail", or when one is inconclusive and
    inconclusive counts as fail; pass otherwise."""
    failed = [c for c in checks if c.status == "fail"]
    open_ = [c for c in checks if c.status == "inconclusive"]
    listed = ", ".join(c.name for c in open_)
    if failed:
        return "fail", "FAIL: " + "; ".join(f"{c.name}: {c.message}" for c in failed)
    if open_ and settings.inconclusive == "fail":
        return "fail", (f"FAIL: {len(open_)} inconclusive check{'s' if len(open_) > 1 else ''} counted as failing "
                        f"(--inconclusive=fail): " + "; ".join(f"{c.name}: {c.message}" for c in open_))
    passed = len(checks) - len(open_)
    return "pass", f"PASS: {passed} of {len(checks)} checks passed" + (
        f", {len(open_)} inconclusive (counted as pass, --inconclusive=pass): {listed}" if open_ else "")


def _min_score_check(baseline: GateBaseline, cand_scores: list[float]) -> Check:
    """Three states on the candidate's own interval: meets passes, below fails, inconclusive is inconclusive."""
    import math

    from scipy import stats as scipy_stats

    from harness.verdicts import min_score_verdict

    min_score = baseline.min_score
    verdict = min_score_verdict(cand_scores, min_score)
    score, n = verdict.estimate, len(cand_scores)
    # The drop below min_score a 95% interval would show with 80% power at this n (normal approximation).
    mde = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * math.sqrt(max(score * (1 - score), 1 / n) / n)
    message = f"held-out score {verdict.text}"
    if verdict.state == "inconclusive":
        message += f"; minimum detectable shortfall at n={n}: {mde:.3f}"
    return Check(
        name="heldout_min_score", family="min_score", title="held-out score (candidate alone) vs min_score",
        status={"meets": "pass", "below": "fail", "inconclusive": "inconclusive"}[verdict.state],
        message=message, reference=min_score, candidate=score, limit=f"95% interval vs {min_score:.3f}",
        delta=score - min_score, ci_low=verdict.ci_low, ci_high=verdict.ci_high, mde=mde, test="wilson"
        if verdict.method.startswith("95% Wilson") else "student_t", n=n,
    )


def _paired_check(name: str, title: str, test, p_holm: float, alpha: float) -> Check:
    """pass: shown no worse than the limit; fail: shown worse (Holm-adjusted); inconclusive: neither."""
    limit = test.margin
    if p_holm < alpha:
        status, why = "fail", f"worse than the {limit:.3f} limit (Holm-adjusted p={p_holm:.2g} < {alpha:g})"
    elif test.p_noninferior < alpha:
        status, why = "pass", f"no worse than the {limit:.3f} limit (p={test.p_noninferior:.2g} < {alpha:g})"
    else:
        status, why = "inconclusive", (
            f"neither shown within nor beyond the {limit:.3f} limit at n={test.n}; the minimum detectable drop "
            f"here is {test.mde:.3f} (80% power)")
    return Check(
        name=name, family=name.split("/", 1)[0], title=title, status=status,
        message=(f"{test.mean_reference:.3f} -> {test.mean_candidate:.3f} (delta {test.delta:+.3f}, "
                 f"{100 * (1 - 2 * alpha):g}% {test.method_text} interval [{test.ci_low:+.3f}, {test.ci_high:+.3f}], "
                 f"{test.losses} worse / {test.wins} better of {test.n}): {why}"),
        reference=test.mean_reference, candidate=test.mean_candidate,
        limit=f"drop < {limit:.3f} (one-sided alpha {alpha:g})", delta=test.delta, ci_low=test.ci_low,
        ci_high=test.ci_high, margin=limit, p_worse=test.p_worse, p_worse_holm=p_holm,
        p_noninferior=test.p_noninferior, mde=test.mde, test=test.method, n=test.n,
    )


def require_comparable(baseline: GateBaseline, candidate: RunResults) -> None:
    """Raise CannotCompareError (with a side-by-side table) unless both records score the same examples of one
    eval set on one base model with one tokenizer and chat template."""
    if candidate.status != "complete":
        raise CannotCompareError(f"candidate results status is {candidate.status!r}, not complete")
    rows = identity_rows(baseline, candidate)
    differing = [row for row in rows if row[1] != row[2]]
    if differing:
        raise CannotCompareError(
            "baseline and candidate differ in " + ", ".join(row[0] for row in differing)
            + f" (baseline {differing[0][1]}, candidate {differing[0][2]})", rows)
    stage = candidate.final_stage
    for task, base_task in baseline.regression.items():
        if task not in stage.regression:
            raise CannotCompareError(
                f"the baseline gates regression task {task!r} but the candidate has no score for it "
                "(run_regression=false, or the task is missing from eval.regression?)")
        cand_task = stage.regression[task]
        for what, b, c in (("example count", len(base_task.per_example), len(cand_task.per_example)),
                           ("task_version", base_task.task_version, cand_task.task_version),
                           ("metric", base_task.metric, cand_task.metric)):
            if b != c:
                raise CannotCompareError(f"regression {task} {what} differs: baseline {b}, candidate {c}",
                                         [[f"regression {task} {what}", str(b), str(c)]])


def identity_rows(baseline: GateBaseline, candidate: RunResults) -> list[list[str]]:
    """[what, baseline, candidate] for every identity the two sides must share."""
    b, c = baseline, candidate
    pairs = [
        ("eval set", b.eval_set.name, c.eval_set.name),
        ("eval split", b.eval_set.split, c.eval_set.split),
        ("eval subset (max_examples)", b.max_examples, c.config["eval"]["max_examples"]),
        ("eval set hash", b.eval_set.hash, c.eval_set.hash),
        ("held-out examples", len(b.heldout.per_example), len(c.final_stage.heldout.per_example)),
        ("base model hash", b.model.hash, c.model.hash),
        ("quantized", b.model.quantized, c.model.quantized),
        ("compute dtype", b.model.compute_dtype, c.model.compute_dtype),
        ("tokenizer", b.tokenizer.name, c.tokenizer.name),
        ("vocab size", b.tokenizer.vocab_size, c.tokenizer.vocab_size),
        ("chat template sha256", b.tokenizer.chat_template_sha256, c.tokenizer.chat_template_sha256),
    ]
    return [[what, str(x), str(y)] for what, x, y in pairs]
