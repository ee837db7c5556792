"""harness: an evaluation-driven experiment harness for LoRA/QLoRA fine-tuning.

Pipeline stages, one module each: config -> evalset -> data -> model -> train (SFT) -> dpo -> evaluate
(held-out graders, lm-eval regression) -> run (one trial) -> sweep (Optuna) -> report -> gate.
"""

__version__ = "0.1.0"
