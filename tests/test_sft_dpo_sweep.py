"""SFT -> DPO sweeps on the tiny model: the SFT is trained once per sweep and every DPO trial starts from exactly
its tensors; a lone trial command rebuilds the trial; resume reuses the SFT and refuses a changed one; the
verdicts compare each DPO trial with that SFT on the reporting split; loss types are trl's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import harness.run
from harness.config import DPO_LOSS_TYPES
from harness.records import RunResults, SharedSft, SweepVerdicts, TrialRecord, read_record
from harness.reproduce import compose_run_config
from harness.shared_sft import shares_sft
from harness.stats import paired_mde
from harness.sweep import run_sweep
from tests.conftest import TINY_OVERRIDES, make_config

OVERRIDES = [
    *TINY_OVERRIDES, "sweep.tracking=none", "+sweep=sft_dpo", "sweep.n_trials=2", "sweep.sampler=random",
    "eval.max_examples=6", "eval.canary_examples=2", "sweep.space.dpo_max_steps=[2]",
    "sweep.space.dpo_beta=[0.1,0.5]", "sweep.space.dpo_loss_type=[sigmoid,ipo]", "train.dpo.batch_size=4",
    "data.max_preference_examples=8", "data.preference_source=file",  # the user's pairs; mined ones below
]


class SftCounter:
    """Counts SFT trainings, by run directory."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.run_dirs: list[Path] = []
        real = harness.run.train_sft

        def counted(model, tokenizer, examples, stage, run_dir, **kwargs):
            self.run_dirs.append(Path(run_dir))
            return real(model, tokenizer, examples, stage, run_dir, **kwargs)

        patch.setattr(harness.run, "train_sft", counted)


def _sweep(root: Path, extra: list[str] = ()):
    overrides = [*OVERRIDES, f"sweep.sweeps_dir={root}", *extra]
    return run_sweep(make_config(overrides), overrides)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_dpo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root / "cache"))
        counter = SftCounter(patch)
        summary = _sweep(root)
    return root, root / "sft_dpo", summary, counter.run_dirs


def _trial(sweep_dir: Path, number: int) -> tuple[TrialRecord, RunResults]:
    trial_dir = sweep_dir / "trials" / f"{number:03d}"
    return read_record(TrialRecord, trial_dir / "trial.json"), read_record(RunResults, trial_dir / "results.json")


def _stages_in_loss_log(run_dir: Path) -> set[str]:
    return {json.loads(line)["stage"] for line in (run_dir / "loss.jsonl").read_text().splitlines()}


def test_two_trials_train_the_sft_once_and_both_start_from_its_exact_adapter(sweep):
    _, sweep_dir, summary, sft_trainings = sweep
    assert summary.n_complete == 2
    assert sft_trainings == [sweep_dir / "sft"], "one SFT training for the whole sweep, in sweeps/<name>/sft"
    shared = read_record(SharedSft, sweep_dir / "sft" / "shared_sft.json")
    sft_results = read_record(RunResults, sweep_dir / "sft" / "results.json")
    assert shared.adapter_hash == sft_results.adapter.hash
    assert sft_results.eval_set.split == "selection" and list(sft_results.stages) == ["sft"]
    params = []
    for number in (0, 1):
        record, results = _trial(sweep_dir, number)
        params.append(record.params)
        sft_stage, dpo_stage = results.stages["sft"], results.stages["dpo"]
        assert sft_stage.shared_from == str(sweep_dir / "sft") and sft_stage.adapter_hash == shared.adapter_hash
        assert sft_stage.heldout.scores == sft_results.stages["sft"].heldout.scores  # the SFT's record, copied
        assert dpo_stage.reference.policy == "sft" and dpo_stage.reference.adapter_hash == shared.adapter_hash
        assert results.adapter.hash != shared.adapter_hash, "DPO trained the trial's adapter"
        assert _stages_in_loss_log(Path(record.trial_dir)) == {"dpo"}, "the trial trained DPO only"
        assert record.steps_trained == record.steps_budget == 2  # DPO's 2 steps: the SFT's are the sweep's
    assert params[0] != params[1]
    assert _stages_in_loss_log(sweep_dir / "sft") == {"sft"}


def test_the_shared_sft_equals_a_standalone_sft_run_and_a_lone_trial_command_rebuilds_the_trial(sweep, tmp_path,
                                                                                            monkeypatch):
    root, sweep_dir, _, _ = sweep
    monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))
    shared = read_record(SharedSft, sweep_dir / "sft" / "shared_sft.json")
    # train=sft with the same settings (sft_dpo's SFT recipe is train=sft's at 30 steps; the tiny overrides set 2)
    alone_sft = harness.run.run_experiment(
        make_config([*TINY_OVERRIDES, "lora.r=4", "lora.alpha=8.0", "eval.max_examples=6", "eval.canary_examples=2"]),
        tmp_path / "sft", progress=False)
    assert alone_sft.adapter.hash == shared.adapter_hash
    # The trial's recorded command alone trains its own SFT (the same tensors), then the same DPO.
    record, results = _trial(sweep_dir, 1)
    alone = harness.run.run_experiment(compose_run_config(record.overrides), tmp_path / "trial", progress=False)
    assert alone.stages["dpo"].reference.adapter_hash == shared.adapter_hash
    assert alone.adapter.hash == results.adapter.hash
    assert alone.final.heldout.score == results.final.heldout.score


def test_verdicts_compare_every_dpo_trial_with_the_sft_on_the_reporting_split(sweep):
    root, sweep_dir, summary, _ = sweep
    verdicts = read_record(SweepVerdicts, sweep_dir / "verdicts.json")
    dpo = verdicts.dpo
    assert dpo is not None and dpo.chosen == summary.best_trial == verdicts.best
    sft_reporting = read_record(RunResults, Path(dpo.sft_results))
    assert sft_reporting.eval_set.split == "reporting" and sft_reporting.adapter.hash == dpo.sft_adapter_hash
    assert [t.number for t in dpo.trials] == [0, 1]
    for trial in dpo.trials:
        reporting = read_record(RunResults, Path(trial.results))
        assert reporting.eval_set.split == "reporting"
        difference = reporting.final.heldout.score - sft_reporting.final.heldout.score
        assert trial.verdict.question == "dpo_vs_sft" and trial.verdict.estimate == pytest.approx(difference)
        assert trial.verdict.state in ("better", "worse", "inconclusive")
        assert trial.verdict.p_adjusted is not None  # two trials: Holm over both
        assert trial.verdict.ci_low <= trial.verdict.estimate <= trial.verdict.ci_high
        assert trial.detectable == pytest.approx(paired_mde(sft_reporting.final_stage.heldout.scores,
                                                            reporting.final_stage.heldout.scores))
        assert trial.detectable > 0
    assert dpo.verdict.question == "dpo_improves_sft" and dpo.verdict.state in ("yes", "no", "inconclusive")
    assert dpo.verdict.p_adjusted is None
    report = (root.parent / "reports" / "sft_dpo" / "report.md").read_text()  # reports/ beside the sweeps folder
    assert "Does DPO improve on this SFT?" in report and "after DPO" in report


def test_resume_reuses_the_shared_sft(sweep, tmp_path, monkeypatch):
    root, sweep_dir, _, _ = sweep
    copy = tmp_path / "sweeps"
    shutil.copytree(sweep_dir, copy / "sft_dpo", symlinks=True)
    monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))
    counter = SftCounter(monkeypatch)
    summary = _sweep(copy, ["sweep.n_trials=3"])  # one more trial, on the same SFT
    assert counter.run_dirs == [], "the shared SFT was reused, not trained again"
    assert summary.n_complete == 3
    shared = read_record(SharedSft, copy / "sft_dpo" / "sft" / "shared_sft.json")
    assert _trial(copy / "sft_dpo", 2)[1].stages["sft"].adapter_hash == shared.adapter_hash


def test_a_changed_sft_setting_with_an_existing_shared_sft_is_refused(sweep, tmp_path, monkeypatch):
    root, sweep_dir, _, _ = sweep
    copy = tmp_path / "sweeps"
    shutil.copytree(sweep_dir, copy / "sft_dpo", symlinks=True)
    before = sorted(p.name for p in (copy / "sft_dpo" / "sft").iterdir())
    monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))
    # The study itself refuses first: the SFT settings are among its fixed settings.
    with pytest.raises(ValueError, match=r"different fixed settings \(train\.sft\.learning_rate: study has 0\.001"):
        _sweep(copy, ["train.sft.learning_rate=5e-4"])
    # A shared SFT left in a sweep directory whose study is gone (a new study): its own identity refuses it.
    fresh = tmp_path / "fresh"
    shutil.copytree(sweep_dir / "sft", fresh / "sft_dpo" / "sft", symlinks=True)
    with pytest.raises(ValueError, match=r"shared SFT was trained with another config_hash \(config: "
                                         r"train\.sft\.learning_rate\).*not deleted"):
        _sweep(fresh, ["train.sft.learning_rate=5e-4"])
    for kept in (copy, fresh):
        assert sorted(p.name for p in (kept / "sft_dpo" / "sft").iterdir()) == before


def test_an_sft_directory_the_harness_did_not_make_is_refused_and_kept(tmp_path):
    users = tmp_path / "sft_dpo" / "sft"
    users.mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="was not made by the harness"):
        _sweep(tmp_path)
    assert (users / "notes.txt").read_text() == "mine"


def test_only_a_space_of_dpo_settings_after_sft_shares_the_sft():
    assert shares_sft(make_config(["+sweep=sft_dpo"]))
    assert not shares_sft(make_config(["+sweep=search_sft_dpo"]))  # samples lora_* and sft_*: SFT per trial
    assert not shares_sft(make_config(["+sweep=sft_dpo", "train.stages=[dpo]", "data.preference_source=file"]))


# ---------------------------------------------------------------------------------------------------------
# Loss types: exactly trl's


def test_dpo_loss_types_are_exactly_trls_paired_losses():
    import inspect

    from trl import DPOConfig, DPOTrainer

    documented = re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"])
    implemented = re.findall(r'loss_type == "(\w+)"', inspect.getsource(DPOTrainer))
    assert list(DPO_LOSS_TYPES) == documented
    assert set(implemented) == set(DPO_LOSS_TYPES)
    assert "simpo" not in DPO_LOSS_TYPES  # trl has SimPO in CPOTrainer only


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm"])
def test_a_trl_loss_type_is_accepted_as_a_search_parameter(loss_type):
    cfg = make_config(["+sweep=sft_dpo", f"sweep.space.dpo_loss_type=[{loss_type}]"])
    from harness.sweep import apply_params

    assert apply_params(cfg, {"dpo_loss_type": loss_type}).train.dpo.loss_type == loss_type


@pytest.mark.parametrize("values, message", [
    ("[sigmoid,simpo]", r"sweep\.space\.dpo_loss_type\[1\]='simpo': expected one of sigmoid, hinge, ipo"),
    ("[kto]", r"sweep\.space\.dpo_loss_type\[0\]='kto'"),
    ("[exo_pair]", r"sweep\.space\.dpo_loss_type lists exo_pair, which needs train\.dpo\.label_smoothing > 0"),
])
def test_a_loss_type_trl_lacks_is_refused_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        make_config(["+sweep=sft_dpo", f"sweep.space.dpo_loss_type={values}"])
    with pytest.raises(ValueError, match=r"train\.dpo\.loss_type='simpo'"):
        make_config(["train=sft_dpo", "train.dpo.loss_type=simpo"])


# ---------------------------------------------------------------------------------------------------------
# Mined pairs: once per sweep, with the shared SFT policy, never on a held-out prompt


POOL = Path(__file__).resolve().parents[1] / "evals" / "json_extract" / "preference_pool.jsonl"
HELDOUT = Path(__file__).resolve().parents[1] / "evals" / "json_extract" / "heldout.jsonl"


@pytest.fixture(scope="module")
def mined_sweep(tmp_path_factory):
    """A 2-trial sft_dpo sweep on pairs mined from a 5-prompt pool whose last prompt is a held-out one."""
    root = tmp_path_factory.mktemp("mined")
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:4]]
    heldout = json.loads(HELDOUT.read_text(encoding="utf-8").splitlines()[4])
    rows.append({"messages": heldout["messages"], "reference": heldout["reference"]})
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    extra = ["data.preference_source=mined", f"data.mining.pool_file={pool}", "data.mining.samples=1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root / "cache"))
        summary = _sweep(root, extra)
    return root, root / "sft_dpo", summary, extra, pool, heldout


def test_mined_pairs_exclude_heldout_prompts_and_feed_every_trial(mined_sweep):
    from harness.records import MinedPairsRecord

    _, sweep_dir, summary, _, pool, heldout = mined_sweep
    assert summary.n_complete == 2
    pairs_file = sweep_dir / "pairs" / "onpolicy.jsonl"
    provenance = read_record(MinedPairsRecord, Path(f"{pairs_file}.provenance.json"))
    shared = read_record(SharedSft, sweep_dir / "sft" / "shared_sft.json")
    assert provenance.adapter_hash == shared.adapter_hash, "mined with the shared SFT policy"
    assert provenance.excluded == [f"{pool}:5"] and provenance.counts.prompts_mined == 4
    pairs = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    assert pairs and all(pair["prompt"] != heldout["messages"] for pair in pairs)
    for number in (0, 1):
        _, results = _trial(sweep_dir, number)
        assert results.data.preference_sha256 == provenance.pairs_sha256
        assert results.data.preference_file == str(pairs_file)
        assert results.data.preference_pairs == min(len(pairs), 8)  # data.max_preference_examples=8


def test_a_mined_trial_command_alone_mines_the_same_pairs_and_trains_the_same_adapter(mined_sweep, tmp_path,
                                                                                     monkeypatch):
    root, sweep_dir, _, _, _, _ = mined_sweep
    monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))
    record, results = _trial(sweep_dir, 0)
    alone = harness.run.run_experiment(compose_run_config(record.overrides), tmp_path / "trial", progress=False)
    assert alone.data.preference_file == str(tmp_path / "trial" / "pairs" / "onpolicy.jsonl")
    assert alone.data.preference_sha256 == results.data.preference_sha256
    assert alone.adapter.hash == results.adapter.hash


def test_resume_with_other_mining_settings_refuses_and_keeps_the_pairs(mined_sweep, tmp_path, monkeypatch):
    root, sweep_dir, _, extra, _, _ = mined_sweep
    copy = tmp_path / "sweeps"
    shutil.copytree(sweep_dir, copy / "sft_dpo", symlinks=True)
    pairs = (copy / "sft_dpo" / "pairs" / "onpolicy.jsonl").read_bytes()
    monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))
    counter = SftCounter(monkeypatch)
    with pytest.raises(ValueError, match=r"different fixed settings \(data\.mining\.samples: study has 1, this command 2"):
        _sweep(copy, [*extra, "data.mining.samples=2"])  # the study refuses first
    # The pairs left in a sweep directory whose study is gone: their provenance refuses them.
    (copy / "sft_dpo" / "study.db").unlink()
    shutil.rmtree(copy / "sft_dpo" / "trials")
    with pytest.raises(ValueError, match=r"mined with another data\.mining\.samples than this sweep uses.*not deleted"):
        _sweep(copy, [*extra, "data.mining.samples=2"])
    assert counter.run_dirs == [], "the shared SFT (mining settings are not its identity) was reused"
    assert (copy / "sft_dpo" / "pairs" / "onpolicy.jsonl").read_bytes() == pairs


def test_mined_pairs_need_an_sft_stage_and_a_pool():
    with pytest.raises(ValueError, match=r"data\.preference_source=mined with train\.stages=\['dpo'\]"):
        make_config(["train=dpo", "data.preference_source=mined"])
    with pytest.raises(ValueError, match=r"data\.preference_source=mined needs a prompt pool: set data\.mining\.pool_file"):
        make_config(["train=sft_dpo", "data.preference_source=mined", "data.mining.pool_file=null"])
    with pytest.raises(ValueError, match=r"data\.preference_source='user'"):
        make_config(["data.preference_source=user"])
