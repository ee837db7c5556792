"""Re-grade stored held-out outputs when only the graders changed: zero model forward passes.

An eval set's hash covers its data, splits, generation settings and graders (`harness.evalset.eval_fingerprint`).
When a grader's version (or config) changes, the hash changes although every output the model would generate is
the same. `graders_only_changed` recomputes the hash a record was made under, from today's fingerprint with the
record's own graders and grader versions put back: equal means that nothing but the graders differs, and the
record's outputs can be graded again instead of generated again.

    if graders_only_changed(record.config["eval"], record.final_stage.heldout.grader_versions,
                            record.eval_set.hash, cfg.eval):
        heldout = regrade_heldout(cfg.eval, [(row.source, row.output) for row in rows])
    record = regrade_results(record, cfg, eval_set_hash)   # every held-out result in a record, headline recomputed
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from harness.config import EvalConfig, RunConfig
from harness.records import HeldoutResult, RunResults


def eval_identity(eval_cfg: EvalConfig, fingerprint_hash: str) -> str:
    """`<hash>-<split>[-first<N>]`, as harness.evalset.verify_frozen builds it."""
    identity = f"{fingerprint_hash}-{eval_cfg.split}"
    return identity if eval_cfg.max_examples is None else f"{identity}-first{eval_cfg.max_examples}"


def graders_only_changed(recorded_eval: dict, recorded_grader_versions: dict[str, str], recorded_hash: str,
                         eval_cfg: EvalConfig) -> bool:
    """True when the record's eval identity differs from the current one in the graders only."""
    from harness.evalset import eval_fingerprint, fingerprint_hash

    current = eval_fingerprint(eval_cfg)
    if recorded_hash == eval_identity(eval_cfg, current["hash"]):
        return False  # nothing changed at all
    then = {**current, "graders": recorded_eval["graders"],
            "grader_versions": list(recorded_grader_versions.values())}
    return recorded_hash == eval_identity(eval_cfg, fingerprint_hash(then))


def regrade_heldout(eval_cfg: EvalConfig, outputs: Sequence[tuple[str, str]]) -> HeldoutResult:
    """Grade stored (source, output) pairs with the current graders; the examples (references) come from the
    current eval set by source, which `graders_only_changed` has shown to be the same data."""
    from harness.data import DataError
    from harness.evaluate import grade_outputs, load_heldout

    examples = {example.source: example for example in load_heldout(eval_cfg)}
    missing = [source for source, _ in outputs if source not in examples]
    if missing:
        raise DataError(f"cannot re-grade: stored output for {missing[0]} has no row in the current eval set")
    return grade_outputs(eval_cfg, [examples[source] for source, _ in outputs], [output for _, output in outputs])


def regrade_results(results: RunResults, cfg: RunConfig, eval_set_hash: str) -> RunResults:
    """The record with every held-out result in it (each stage's and the base model's baselines') graded by
    `cfg.eval`'s graders, its headline recomputed and its eval identity `eval_set_hash`; the outputs, timings and
    regression scores are kept as recorded. A new record: `results` is not changed."""
    from harness.run import final_scores

    def again(heldout: HeldoutResult | None) -> HeldoutResult | None:
        if heldout is None:
            return None
        regraded = regrade_heldout(cfg.eval, [(row.source, row.output) for row in heldout.per_example])
        return dataclasses.replace(regraded, seconds=heldout.seconds, batch_size=heldout.batch_size,
                                   max_new_tokens=heldout.max_new_tokens)

    stages = {name: dataclasses.replace(stage, heldout=again(stage.heldout)) for name, stage in results.stages.items()}
    baselines = results.baselines
    if baselines is not None:
        prompt = again(baselines.prompt_baseline)
        baselines = dataclasses.replace(
            baselines, zero_shot=again(baselines.zero_shot), prompt_baseline=prompt,
            prompting_meets_min_score=bool(prompt and prompt.score >= cfg.eval.min_score))  # as harness.baselines
    config = {**results.config, "eval": {**results.config["eval"],
                                         "graders": [dataclasses.asdict(g) for g in cfg.eval.graders]}}
    return dataclasses.replace(
        results, config=config, eval_set=dataclasses.replace(results.eval_set, hash=eval_set_hash), stages=stages,
        baselines=baselines, final=final_scores(cfg, results.final.stage, stages, baselines))
