"""Experiment tracking for sweeps: MLflow (the default) or W&B, driven by harness.sweep.

    tracker = Tracker(cfg.sweep, sweep_dir)                      # sweep.tracking: mlflow, wandb or none
    callbacks = [tracker.trial_callback(trial.number, params)]    # logs the trainer's metrics live
    ...
    tracker.end_trial(state.name, values)
    tracker.close()

TrialSteps counts optimizer steps across a trial's stages (SFT, then DPO), for the tracker's curves and the
sweep's pruning reports; StepCounter and steps_budget give trial.json the steps a trial trained and would have.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from harness.config import SweepConfig
from harness.faults import kill_point


class TrialSteps(TrainerCallback):
    """Counts optimizer steps across a trial's stages: each trainer (SFT, then DPO) restarts global_step at 0,
    but Optuna ignores a second report at a step it has seen and W&B drops steps that go backwards."""

    def __init__(self):
        self.offset = 0

    def on_train_end(self, args, state, control, **kwargs):
        self.offset += state.global_step

    def trial_step(self, state) -> int:
        return self.offset + state.global_step


class StepCounter(TrialSteps):
    """The optimizer steps a trial has trained, across its stages, up to where it ends (pruned ones included)."""

    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = self.trial_step(state)


def steps_budget(cfg, shared_sft: bool = False) -> int | None:
    """The optimizer steps a trial of `cfg` (a RunConfig) trains if nothing stops it (None: a stage trains for
    epochs); `shared_sft`: the trial starts from the sweep's shared SFT and trains DPO only. With StepCounter,
    what the report's pruning budget adds up."""
    stages = [cfg.train.sft if name == "sft" else cfg.train.dpo for name in cfg.train.stages
              if not (shared_sft and name == "sft")]
    return sum(stage.max_steps for stage in stages) if all(stage.max_steps > 0 for stage in stages) else None


class Tracker:
    """Experiment tracking. MLflow: the sweep as a parent run, each trial a child run. W&B: one run per trial,
    grouped by sweep (W&B has no nested runs; set WANDB_MODE=offline to keep it local). Loss curves are
    logged live from the trainer."""

    def __init__(self, sweep: SweepConfig, sweep_dir: Path):
        self.kind, self.sweep, self.sweep_dir = sweep.tracking, sweep, sweep_dir
        if self.kind not in ("mlflow", "wandb", "none"):
            raise ValueError(f"sweep.tracking={self.kind!r}: expected mlflow, wandb or none")
        self.mlflow = self.wandb = self.wandb_run = None
        if self.kind == "mlflow":
            import mlflow

            self.mlflow = mlflow
            mlflow.set_tracking_uri(sweep.tracking_uri or f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment(f"harness-{sweep.name}")
            mlflow.start_run(run_name=f"sweep-{sweep.name}")
        elif self.kind == "wandb":
            import wandb

            self.wandb = wandb

    def trial_callback(self, number: int, params: dict) -> TrainerCallback:
        if self.kind == "mlflow":
            self.mlflow.start_run(run_name=f"trial-{number:03d}", nested=True)
            self.mlflow.log_params(params)
        elif self.kind == "wandb":
            self.wandb_run = self.wandb.init(
                project=f"harness-{self.sweep.name}", group=self.sweep.name, name=f"trial-{number:03d}",
                config=params, dir=str(self.sweep_dir),
            )
        tracker = self

        class LogToTracker(TrialSteps):
            def on_step_end(self, args, state, control, **kwargs):
                kill_point("mid_training")

            def on_log(self, args, state, control, logs=None, **kwargs):
                metrics = {k.replace("/", "_"): float(v) for k, v in (logs or {}).items()
                           if isinstance(v, (int, float))}
                if metrics and tracker.kind == "mlflow":
                    tracker.mlflow.log_metrics(metrics, step=self.trial_step(state))
                elif metrics and tracker.kind == "wandb":
                    tracker.wandb_run.log(metrics, step=self.trial_step(state))

        return LogToTracker()

    def end_trial(self, state: str, values: list[float] | None) -> None:
        if self.kind == "mlflow":
            if values:
                self.mlflow.log_metric("heldout_score", values[0])
            self.mlflow.set_tag("state", state)
            self.mlflow.end_run()
        elif self.kind == "wandb" and self.wandb_run is not None:
            self.wandb_run.summary["state"] = state
            if values:
                self.wandb_run.summary["heldout_score"] = values[0]
            self.wandb_run.finish()
            self.wandb_run = None

    def close(self) -> None:
        if self.kind == "mlflow":
            self.mlflow.end_run()
