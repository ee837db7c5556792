"""The report's reporting-split section: selection vs reporting scores and the three-state verdicts.

    blocks = evidence_section(sweeps)      # from each sweep's verdicts.json (harness.reporting writes it)

A sweep chooses on its eval set's selection split and is judged on the reporting split, which no selection has
touched; this section shows, for the adapters judged, both scores (the optimism gap is how much choosing
flattered the selection score) and every verdict with its state, its evidence and the method behind it.
"""

from __future__ import annotations

from harness.records import DpoVerdicts, SweepVerdicts
from harness.render import Heading, Para, Table
from harness.report import Sweep

INTERVAL_METHODS = (
    "Intervals: a held-out score's 95% interval is the Wilson score interval for 0/1 scores (Student t for partial "
    "credit); a paired difference's is the exact conditional interval for 0/1 scores (Clopper-Pearson on the "
    "discordant pairs, consistent with McNemar's exact test) or the paired bootstrap percentile interval; "
    "equivalence is TOST (the 90% interval of the difference inside ±margin)."
)
STATE_CLASS = {"meets": "verdict ok", "no": "verdict ok", "better": "verdict ok", "cheaper": "verdict ok",
               "best": "verdict ok", "below": "verdict warn", "yes": "verdict ok", "worse": "verdict warn",
               "inconclusive": "verdict warn"}
QUESTIONS = {"min_score": "meets min_score?", "finetuning_needed": "was fine-tuning needed?",
             "best_vs_runner_up": "best vs runner-up", "cheaper_alternative": "cheaper configuration?",
             "dpo_vs_sft": "after DPO vs after SFT", "dpo_improves_sft": "does DPO improve on this SFT?"}


def evidence_section(sweeps: list[Sweep]) -> list:
    blocks: list = [Heading(2, "Verdicts on the reporting split")]
    for sweep in sweeps:
        if len(sweeps) > 1:
            blocks.append(Heading(3, f"Sweep {sweep.name}"))
        if sweep.verdicts is None:
            blocks.append(Para(
                "No reporting-split verdicts (verdicts.json is missing: the sweep did not finish, or its reporting "
                "evaluation failed). Every score in this report is on the selection split the best trial was "
                "chosen on, and is biased upward.", "warn"))
            continue
        blocks += _one_sweep(sweep.verdicts)
    blocks.append(Para(INTERVAL_METHODS, "note"))
    return blocks


def _one_sweep(verdicts: SweepVerdicts) -> list:
    recommended = next(s for s in verdicts.scores if s.number == verdicts.recommended)
    headline = (f"Recommended adapter: trial #{verdicts.recommended}, reporting split {recommended.reporting.score:.3f} "
                f"[{recommended.reporting.ci_low:.3f}, {recommended.reporting.ci_high:.3f}], "
                f"n={recommended.reporting.n} (selection split {recommended.selection.score:.3f}; best on the "
                f"selection split: trial #{verdicts.best}).")
    blocks: list = [Para(headline, "verdict ok"),
                    Para("The trials were ranked on the selection split only; the numbers below on the reporting "
                         "split were not used to choose anything.")]
    rows = [[f"#{s.number}", f"{s.selection.score:.3f} [{s.selection.ci_low:.3f}, {s.selection.ci_high:.3f}]",
             f"{s.reporting.score:.3f} [{s.reporting.ci_low:.3f}, {s.reporting.ci_high:.3f}]",
             f"{s.selection.n} / {s.reporting.n}", f"{s.optimism_gap:+.3f}"] for s in verdicts.scores]
    blocks.append(Table(["trial", "selection split [95% CI]", "reporting split [95% CI]", "n (sel. / rep.)",
                         "optimism gap (sel. - rep.)"], rows))
    verdict_rows = [[QUESTIONS.get(v.question, v.question), v.state.upper(), v.text, v.method]
                    for v in verdicts.verdicts]
    blocks.append(Table(["question", "state", "evidence", "method"], verdict_rows, wrap_columns=(2, 3)))
    for verdict in verdicts.verdicts:
        if verdict.examples_to_decide:
            blocks.append(Para(f"{QUESTIONS.get(verdict.question, verdict.question)} is inconclusive: about "
                               f"{verdict.examples_to_decide} reporting examples would decide it if the observed "
                               "effect held.", "warn"))
    if verdicts.dpo is not None:
        blocks += _dpo_blocks(verdicts.dpo)
    blocks.append(Para("Why this adapter: " + " ".join(verdicts.reasons)))
    blocks.append(Para(f"Multiple comparisons: {verdicts.correction}. Equivalence margin: "
                       f"±{verdicts.equivalence_margin:g} (eval.equivalence_margin)."))
    return blocks


def _dpo_blocks(dpo: DpoVerdicts) -> list:
    """SFT -> DPO: every DPO trial against the shared SFT it started from, on the reporting split."""
    sft = dpo.sft_reporting
    verdict = dpo.verdict
    blocks: list = [
        Heading(3, "Does DPO improve on this SFT?"),
        Para(f"Answer: {verdict.text}", STATE_CLASS.get(verdict.state, "verdict warn")),
        Para(f"Every trial started from the same SFT adapter (trained once, hash {dpo.sft_adapter_hash[:12]}): "
             f"reporting split {sft.score:.3f} [{sft.ci_low:.3f}, {sft.ci_high:.3f}], n={sft.n} (selection split "
             f"{dpo.sft_selection.score:.3f}). The sweep's verdict is about trial #{dpo.chosen}, chosen on the "
             "selection split."),
    ]
    rows = []
    for trial in dpo.trials:
        v = trial.verdict
        p_value = f"{v.p_value:.3g}" + (f" (Holm {v.p_adjusted:.3g})" if v.p_adjusted is not None else "")
        settings = " ".join(f"{k}={val:.3g}" if isinstance(val, float) else f"{k}={val}"
                            for k, val in trial.params.items())
        rows.append([f"#{trial.number}", settings,
                     f"{trial.reporting.score:.3f} [{trial.reporting.ci_low:.3f}, {trial.reporting.ci_high:.3f}]",
                     f"{100 * v.estimate:+.1f} [{100 * v.ci_low:+.1f}, {100 * v.ci_high:+.1f}]", p_value,
                     v.state.upper(), f"{100 * trial.detectable:.1f}", str(v.examples_to_decide or "")])
    blocks.append(Table(["trial", "DPO settings", "after DPO, reporting [95% CI]", "DPO - SFT, points [95% CI]",
                         "p", "state", "detectable (points)", "examples to decide"], rows, wrap_columns=(1,)))
    blocks.append(Para(f"Method: {verdict.method}. Multiple comparisons: {dpo.correction}. Detectable: the "
                       "smallest true DPO - SFT difference a two-sided paired test at alpha 0.05 detects with 80% power "
                       "on these reporting examples (normal approximation); examples to decide: how many would settle an inconclusive difference if it "
                       "held.", "note"))
    return blocks
