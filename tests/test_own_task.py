"""Your own task, start to finish (issue 14, points 4 and 5): `python -m harness.evalset create`, eval set identity
and the commands its errors print, the built-in ticket_intent template, and the README's "Use your own task"
section run literally in a fresh clone.

The README test clones the committed HEAD into a temporary directory and runs the ```bash blocks under the
README's "## Use your own task" heading exactly as written, with one documented change: `.venv/bin/python` is this
test's interpreter, and every `python -m harness` command (run or validate; not `harness.evalset`) gets
`TINY_APPEND` appended (the tiny model, a few steps, a few eval examples). Then a user's training file in each
supported format, and preference pairs in trl's plain and conversational forms, pass the README's own validate
commands on the clone's files and configs (in this process: the clone is this checkout's committed HEAD).

The in-process tests point the harness at a temporary repository root holding a copy of conf/ and
evals/json_extract/, so that nothing is written into the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import evalset
from harness.artifacts import REPO_ROOT
from harness.data import DataError
from harness.eval_data import assign_splits

TINY_APPEND = ("model=tiny quant=none train.sft.max_steps=2 train.sft.batch_size=4 data.max_sft_examples=16 "
               "train.dpo.max_steps=2 train.dpo.batch_size=4 data.max_preference_examples=8 eval.max_examples=8")
HARNESS_COMMAND = re.compile(r"^\.venv/bin/python -m harness( |$)")


# ---------------------------------------------------------------------------------------------------------
# In a temporary repository root: create, freeze, identities, error commands


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A repository root with the real conf/ and the default eval set, used by every harness path lookup."""
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    shutil.copytree(REPO_ROOT / "evals" / "json_extract", tmp_path / "evals" / "json_extract")
    monkeypatch.setattr("harness.artifacts.REPO_ROOT", tmp_path)
    monkeypatch.setattr("harness.evalset.REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _qa_rows(n: int = 10, split: bool = False) -> list[dict]:
    rows = [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(n)]
    return [{**row, "split": ("selection", "reporting")[i % 2]} for i, row in enumerate(rows)] if split else rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


CREATE_QA = ["create", "--name", "qa", "--from", "qa.jsonl", "--field-prompt", "q", "--field-gold", "a",
             "--grader", "numeric"]


def _compose(overrides):
    from harness.validate import compose_run_config

    return compose_run_config(overrides)


def test_create_writes_a_frozen_set_named_after_its_config(root, capsys):
    _write_jsonl(root / "qa.jsonl", _qa_rows(10))
    assert evalset.main(CREATE_QA) == 0
    config = (root / "conf" / "eval" / "qa.yaml").read_text()
    assert "\nname: qa  #" in config and "python -m harness.evalset create --name qa --from qa.jsonl" in config
    manifest = json.loads((root / "qa.manifest.json").read_text())
    assert manifest["name"] == "qa" and manifest["data_file"] == "qa.jsonl"
    assert manifest["split_assignment"] == {"fraction": 0.4, "seed": 0, "method": "sha256-rank"}
    assert {name: split["n"] for name, split in manifest["splits"].items()} == {"selection": 4, "reporting": 6}
    cfg = _compose(["eval=qa"])
    assert cfg.eval.name == "qa" and cfg.eval.graders[0].type == "numeric"
    assert evalset.verify_frozen(cfg.eval) == f"{manifest['hash']}-selection"
    assert "created eval set qa: 10 examples (selection 4, reporting 6" in capsys.readouterr().out
    # Re-running the same command replaces only its own, unedited files (e.g. after fixing a row).
    assert evalset.main(CREATE_QA) == 0


def test_split_assignment_is_seeded_exact_and_independent_of_row_order():
    keys = [(f"prompt {i}", f"gold {i}") for i in range(50)]
    splits = assign_splits(keys, 0.3, seed=0)
    assert splits.count("selection") == 15
    shuffled = assign_splits(keys[::-1], 0.3, seed=0)[::-1]
    assert shuffled == splits
    assert assign_splits(keys, 0.3, seed=1) != splits
    # copies of a row share its split, so they are removed as duplicates, not counted in both splits
    assert len(set(assign_splits([keys[0]] * 3 + keys[1:4], 0.5, seed=0)[:3])) == 1


def test_create_refuses_to_replace_files_it_did_not_write(root):
    _write_jsonl(root / "qa.jsonl", _qa_rows(10))
    hand_written = root / "conf" / "eval" / "qa.yaml"
    hand_written.write_text("name: qa\n")
    assert evalset.main(CREATE_QA) == 2
    assert hand_written.read_text() == "name: qa\n" and not (root / "qa.manifest.json").exists()
    assert evalset.main([*CREATE_QA, "--force"]) == 0
    edited = hand_written.read_text().replace("min_score: 0.8", "min_score: 0.5")
    hand_written.write_text(edited)
    assert evalset.main(CREATE_QA) == 2 and hand_written.read_text() == edited  # a hand edit is kept
    # Another set's manifest (here the committed default one) is never written over.
    committed = (root / "evals" / "json_extract" / "manifest.json").read_bytes()
    assert evalset.main(["create", "--name", "qa2", *CREATE_QA[3:], "--manifest", "evals/json_extract/manifest.json"]) == 2
    assert (root / "evals" / "json_extract" / "manifest.json").read_bytes() == committed
    assert not (root / "conf" / "eval" / "qa2.yaml").exists()


@pytest.mark.parametrize("rows, args, message", [
    ([*_qa_rows(3), {"q": "How many?", "a": "many"}], [], "qa.jsonl:4: gold answer \"many\" is not valid"),
    ([*_qa_rows(3, split=True), {"q": "x?", "a": "1"}], [], "qa.jsonl:4: no \"split\" field, while"),
    (_qa_rows(4, split=True), ["--split-fraction", "0.5"], "every row of qa.jsonl has its own \"split\""),
    (_qa_rows(4), ["--grader", "{type: regex}"], "pattern is required"),
    (_qa_rows(4), ["--grader", "{type: numeric, tolerence: 1}"], "unknown key 'tolerence'"),
    (_qa_rows(4), ["--split-fraction", "1.5"], "eval.split_fraction=1.5 must be in (0, 1)"),
])
def test_create_checks_everything_before_writing(root, capsys, rows, args, message):
    _write_jsonl(root / "qa.jsonl", rows)
    assert evalset.main([*CREATE_QA, *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert not (root / "conf" / "eval" / "qa.yaml").exists() and not (root / "qa.manifest.json").exists()


def test_rows_that_name_their_split_keep_it(root):
    _write_jsonl(root / "qa.jsonl", _qa_rows(6, split=True))
    assert evalset.main(CREATE_QA) == 0
    cfg = _compose(["eval=qa"])
    assert cfg.eval.split_fraction is None
    assert json.loads((root / "qa.manifest.json").read_text())["splits"]["selection"]["n"] == 3


def test_identity_does_not_depend_on_how_the_path_is_spelled(root):
    data = _write_jsonl(root / "qa.jsonl", _qa_rows(6))
    (root / "sub").mkdir()
    (root / "link.jsonl").symlink_to(data)
    assert evalset.main(CREATE_QA) == 0
    frozen = evalset.verify_frozen(_compose(["eval=qa"]).eval)
    for spelling in ("qa.jsonl", "./qa.jsonl", str(data), "sub/../qa.jsonl", "link.jsonl"):
        assert evalset.verify_frozen(_compose(["eval=qa", f"eval.data_file={spelling}"]).eval) == frozen, spelling
    shutil.copy(data, root / "sub" / "moved.jsonl")  # the same content elsewhere is the same eval set
    assert evalset.verify_frozen(_compose(["eval=qa", "eval.data_file=sub/moved.jsonl"]).eval) == frozen


def test_default_config_on_your_own_data_never_overwrites_the_committed_manifest(root, capsys):
    # The trap of issue 14: eval=json_extract pointed at your data, then "freeze" as the old error suggested.
    _write_jsonl(root / "mine.jsonl", _qa_rows(6, split=True))
    overrides = ["eval.data_file=mine.jsonl", "eval.prompt_field=q", "eval.reference_field=a",
                 "eval.graders=[{type: numeric}]"]
    committed = (root / "evals" / "json_extract" / "manifest.json").read_bytes()
    assert evalset.main(["freeze", *overrides]) == 2
    assert (root / "evals" / "json_extract" / "manifest.json").read_bytes() == committed
    error = capsys.readouterr().err
    assert "this is the manifest of eval set 'json_extract' (evals/json_extract/heldout.jsonl)" in error
    # The error's command gives the data its own set; that set then runs as eval=mine.
    command = re.search(r"with: (python -m harness\.evalset create .*) \(then use eval=(\w+)\)", error)
    assert command and command.group(2) == "mine"
    assert evalset.main(shlex.split(command.group(1))[3:]) == 0
    cfg = _compose(["eval=mine"])
    assert cfg.eval.name == "mine" and evalset.verify_frozen(cfg.eval).endswith("-selection")
    with pytest.raises(DataError, match="this is the manifest of eval set 'json_extract'"):
        evalset.verify_frozen(_compose(overrides).eval)


def _command_in(message: str) -> list[str]:
    command = re.search(r"(?:with|re-freeze): (python -m harness\.evalset freeze.*)$", message)
    assert command, message
    return shlex.split(command.group(1))[3:]


def test_every_freeze_error_prints_the_command_that_works_for_this_set(root):
    shutil.copy(root / "evals" / "json_extract" / "heldout.jsonl", root / "copy.jsonl")
    overrides = ["eval.data_file=copy.jsonl", "eval.manifest=copy.manifest.json", "eval.generation.max_new_tokens=16",
                 "eval.graders=[{type: json_fields, fields: [name, age]}]",
                 "eval.prompt_baseline.system_prompt='Answer in JSON, it\\'s \"strict\".'"]
    eval_cfg = _compose(overrides).eval
    with pytest.raises(DataError, match="has no manifest; freeze it first with: ") as missing:
        evalset.verify_frozen(eval_cfg)
    assert evalset.main(_command_in(str(missing.value))) == 0
    frozen = evalset.verify_frozen(eval_cfg)
    (root / "copy.jsonl").write_text((root / "copy.jsonl").read_text().replace("Bruges", "Brugge", 1))
    with pytest.raises(DataError, match="changed: data_sha256") as changed:
        evalset.verify_frozen(eval_cfg)
    assert evalset.main(_command_in(str(changed.value))) == 0
    assert evalset.verify_frozen(eval_cfg) != frozen


def test_an_eval_config_is_named_after_its_file(root):
    shutil.copy(root / "conf" / "eval" / "json_extract.yaml", root / "conf" / "eval" / "copied.yaml")
    with pytest.raises(ValueError, match=r"copied\.yaml:\d+: eval\.name is json_extract, .* set name: copied"):
        _compose(["eval=copied"])


def test_every_shipped_eval_config_is_named_after_its_file():
    for path in sorted((REPO_ROOT / "conf" / "eval").glob("*.yaml")):
        assert evalset.load_eval_option(path.stem).name == path.stem, path


# ---------------------------------------------------------------------------------------------------------
# The built-in template task


def test_ticket_intent_data_is_reproducible_and_its_config_made_by_create():
    script = REPO_ROOT / "evals" / "ticket_intent" / "generate.py"
    assert subprocess.run([sys.executable, str(script), "--check"], check=False).returncode == 0
    config = (REPO_ROOT / "conf" / "eval" / "ticket_intent.yaml").read_text()
    assert "#   python -m harness.evalset create --name ticket_intent --from evals/ticket_intent/heldout.jsonl" in config
    assert "\nsplit_fraction: 0.4" in config and "\nprompt_field: prompt" in config


def test_ticket_intent_validates_and_its_template_grades_labels(capsys):
    from harness.graders import grade
    from harness.validate import main as validate

    assert validate(["model=tiny", "data=ticket_intent", "eval=ticket_intent", "train=sft_dpo"]) == 0
    out = capsys.readouterr().out
    assert "leakage    0 exact and 0 near" in out and "200 examples kept" in out
    label, fmt = _compose(["eval=ticket_intent"]).eval.graders
    assert grade(label, " Billing.", "billing").score == 1.0 and grade(label, "shipping", "billing").score == 0.0
    assert grade(fmt, "billing", "billing").score == 1.0 and grade(fmt, "The intent is billing.", "billing").score == 0


# ---------------------------------------------------------------------------------------------------------
# The README's "Use your own task" section, run literally in a fresh clone of the committed HEAD


def readme_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use your own task\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def substituted(block: str) -> str:
    """The block with the test's interpreter and TINY_APPEND on each `python -m harness` command line."""
    lines = []
    for line in block.splitlines():
        if HARNESS_COMMAND.match(line):
            assert not line.endswith("\\"), "keep python -m harness commands on one line: the test appends to them"
            line = f"{line} {TINY_APPEND}"
        lines.append(line.replace(".venv/bin/python", shlex.quote(sys.executable)))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the checkout's git repository (the test clones its committed HEAD)")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    target = tmp_path_factory.mktemp("own-task") / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(target)], check=True)
    subprocess.run(["git", "checkout", "--quiet", "--detach", head], cwd=target, check=True)
    return target


def _env(clone: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _bash(clone: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=_env(clone),
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def readme_run(clone) -> list[subprocess.CompletedProcess]:
    blocks = readme_blocks()
    assert len(blocks) == 2, "the section has the walkthrough block and the preference block"
    return [_bash(clone, substituted(block)) for block in blocks]


def _results(clone: Path) -> list[dict]:
    paths = sorted((clone / "sweeps" / "runs").glob("*/results.json"))
    return [json.loads(path.read_text()) for path in paths]


def test_readme_own_task_section_runs_as_written(clone, readme_run):
    for result in readme_run:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    walkthrough, preference = readme_run
    assert "created eval set my_task: 200 examples (selection 80, reporting 120" in walkthrough.stdout
    assert "ok: config, eval set, data" in walkthrough.stdout
    assert (clone / "conf" / "eval" / "my_task.yaml").is_file() and (clone / "my_task.manifest.json").is_file()
    results = _results(clone)
    assert len(results) == 2
    for record in results:
        assert record["eval_set"]["name"] == "my_task"
        assert record["eval_set"]["split"] == "selection"
    assert list(results[0]["stages"]) == ["sft"] and list(results[1]["stages"]) == ["sft", "dpo"]
    # nothing of the default set was touched
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status


def _readme_validate(clone: Path, monkeypatch, index: int, *extra: str) -> int:
    """The README block's validate command, with extra overrides, run in this process against the clone's files
    and configs (the same code as the clone's: its committed HEAD), to save an interpreter start per format."""
    from harness.validate import main as validate

    lines = [line for line in substituted(readme_blocks()[index]).splitlines() if " -m harness validate " in line]
    assert len(lines) == 1
    monkeypatch.setattr("harness.artifacts.REPO_ROOT", clone)
    monkeypatch.setattr("harness.evalset.REPO_ROOT", clone)
    monkeypatch.chdir(clone)
    return validate([*shlex.split(lines[0])[4:], *extra])


def _template_rows(clone: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (clone / "evals" / "ticket_intent" / name).read_text().splitlines()]


def _as_format(row: dict, fmt: str) -> dict:
    user, assistant = row["messages"][0]["content"], row["messages"][1]["content"]
    return {
        "messages": row,
        "sharegpt": {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]},
        "alpaca": {"instruction": user.split("\n\n")[0], "input": user.split("\n\n", 1)[1], "output": assistant},
        "prompt_completion": {"prompt": user, "completion": assistant},
    }[fmt]


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca", "prompt_completion"])
def test_your_training_file_in_each_format_passes_the_readme_validate(clone, readme_run, monkeypatch, capsys, fmt):
    rows = [_as_format(row, fmt) for row in _template_rows(clone, "sft_train.jsonl")[:40]]
    _write_jsonl(clone / f"my_train_{fmt}.jsonl", rows)
    assert _readme_validate(clone, monkeypatch, 0, f"data.sft_file=my_train_{fmt}.jsonl") == 0, capsys.readouterr().err
    assert f"my_train_{fmt}.jsonl (format {fmt}): 40 rows read" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["plain", "conversational"])
def test_your_preference_pairs_in_each_form_pass_the_readme_validate(clone, readme_run, monkeypatch, capsys, form):
    rows = _template_rows(clone, "dpo_train.jsonl")[:20]
    if form == "plain":
        rows = [{"prompt": row["prompt"][0]["content"], "chosen": row["chosen"][0]["content"],
                 "rejected": row["rejected"][0]["content"]} for row in rows]
    _write_jsonl(clone / f"my_pairs_{form}.jsonl", rows)
    assert _readme_validate(clone, monkeypatch, 1, f"data.preference_file=my_pairs_{form}.jsonl") == 0, \
        capsys.readouterr().err
    assert f"my_pairs_{form}.jsonl: 20 rows read, 0 duplicates removed, 8 pairs kept" in capsys.readouterr().out
