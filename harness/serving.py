"""How a trained LoRA adapter is served: vLLM's LoRA constraints, the `vllm serve` command, LoRA's scaling
rule, the serving record (serving.json) and the serving card (serving_card.md).

`harness.export` builds and writes these after proving the adapter; sweeps call `check_servable_ranks` before
trial 0. Nothing here loads a model or imports torch:

    adapter = read_adapter_config(run_dir / "adapter" / "adapter_config.json")   # RecordError naming the key
    checks = vllm_checks(adapter, linear_names, "LlamaForCausalLM")             # list[Check], with fixes
    check_servable_ranks([8, 1024], "sweep.space.lora_r")                        # ValueError naming the key

vLLM's documented LoRA constraints (encoded here; vLLM is not needed): rank <= 512, served with
`--max-lora-rank` = the smallest allowed value >= r; no DoRA; bias == "none"; no modules_to_save; every target
module a Linear layer of the base.

Strings from data or config reach the card only escaped: text through harness.render.md_escape, code spans
and blocks through `md_code` / `md_fence` here.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from pathlib import Path

from harness.recordio import RecordError, from_json
from harness.render import md_escape

SERVING_FORMAT = "harness.export/serving-v1"
EXPORT_FORMAT = "harness.export/v1"
# vLLM's LoRAConfig.max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512], default 16. It sizes the
# server's LoRA slots; it is not a rank the adapter must equal. An adapter loads when r <= --max-lora-rank
# (PEFTHelper.validate_legal), zero-padded into the slot, which costs compute, not accuracy.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16


class ExitCode(IntEnum):
    SHIPPED = 0  # every check passed
    NOT_AS_EVALUATED = 1  # the proof failed: only the record and the card are written
    BAD_INPUT = 2  # one line naming the path; nothing written
    VLLM_REFUSES = 3  # shipped and proven, but vLLM would refuse the adapter as it is


@dataclass
class Check:
    """One serving or proof check. Gating checks decide the exit code; the others are shown and recorded."""

    name: str
    ok: bool
    message: str
    fix: str = ""
    measured: float | None = None
    tolerance: float | None = None
    gating: bool = True


# ---------------------------------------------------------------------------------------------------------
# The adapter's LoRA hyperparameters (PEFT's adapter_config.json, read once into a typed view)


@dataclass(frozen=True)
class AdapterConfig:
    """The keys of PEFT's adapter_config.json that serving, scaling and merging depend on (others ignored)."""

    r: int
    lora_alpha: float
    target_modules: list[str] | str  # names, or one regex over module paths
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)  # per-module r overrides
    alpha_pattern: dict[str, float] = field(default_factory=dict)  # per-module lora_alpha overrides
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        """The adapter's largest rank (rank_pattern can raise single modules above r)."""
        return max([self.r, *self.rank_pattern.values()])

    @property
    def scaling_rule(self) -> str:
        return "alpha/sqrt(r)" if self.use_rslora else "alpha/r"

    def scaling(self, layer: str | None = None) -> float:
        """The scale PEFT applies to `layer` (rank_pattern / alpha_pattern override r / lora_alpha)."""
        r, alpha = self.r, self.lora_alpha
        if layer is not None:
            r = int(_pattern_value(self.rank_pattern, layer, r))
            alpha = float(_pattern_value(self.alpha_pattern, layer, alpha))
        return lora_scaling(r, alpha, self.use_rslora)


def read_adapter_config(path: str | Path) -> AdapterConfig:
    """The typed view of a PEFT adapter_config.json; RecordError names the file and the key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        peft_type = data.get("peft_type") if isinstance(data, dict) else None
        raise RecordError(f"{path}: peft_type {peft_type!r}, expected 'LORA'")
    known = {f.name for f in fields(AdapterConfig)}
    # PEFT writes null for unset options: absent and null both mean the default (a null r is then missing).
    given = {k: v for k, v in data.items() if k in known and v is not None}
    return from_json(AdapterConfig, given, str(path))


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """LoRA's update scale: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _pattern_value(pattern: dict, layer: str, default):
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", layer):
            return value
    return default


# ---------------------------------------------------------------------------------------------------------
# vLLM's documented LoRA constraints


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of this rank (None: none does)."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def unservable_ranks(ranks: list[int]) -> list[int]:
    """Ranks no `--max-lora-rank` can serve (above 512). Ranks <= 0 are config errors, not serving ones."""
    return sorted({int(r) for r in ranks if int(r) > 0 and vllm_max_lora_rank(int(r)) is None})


def check_servable_ranks(ranks: list[int], key: str) -> None:
    """ValueError naming `key` if vLLM cannot serve one of the ranks (sweeps call this before trial 0)."""
    bad = unservable_ranks(ranks)
    if bad:
        largest = VLLM_MAX_LORA_RANKS[-1]
        raise ValueError(f"{key}={list(ranks)}: rank(s) {bad} cannot be served by vLLM (largest "
                         f"--max-lora-rank is {largest}); use {largest} or lower, or set "
                         "sweep.servable_ranks_only=false")


def vllm_checks(adapter: AdapterConfig, linear_names: set[str],
                architecture: str = "the base model") -> list[Check]:
    """The adapter against vLLM's LoRA constraints; `linear_names` are the base's Linear module paths."""
    rank = adapter.rank
    max_rank = vllm_max_lora_rank(rank)
    largest = VLLM_MAX_LORA_RANKS[-1]
    if max_rank is None:
        rank_check = Check("vllm_rank", False, f"rank {rank} is not servable by vLLM: the largest "
                           f"--max-lora-rank is {largest}",
                           fix=f"retrain with r <= {largest}, or serve merged/")
    elif max_rank != rank:
        rank_check = Check("vllm_rank", True, f"rank {rank} loads with --max-lora-rank {max_rank}, the "
                           f"smallest allowed value >= {rank}; vLLM zero-pads it to {max_rank}, which costs "
                           f"compute, not accuracy (r={_allowed_neighbours(rank)} would fill the slot)")
    else:
        default = " (vLLM's default)" if max_rank == VLLM_DEFAULT_MAX_LORA_RANK else ""
        rank_check = Check("vllm_rank", True, f"rank {rank}: --max-lora-rank {max_rank}{default}")
    checks = [rank_check]

    if adapter.use_dora:
        checks.append(Check("vllm_dora", False, "use_dora=true: vLLM does not support DoRA adapters",
                            fix="retrain with plain LoRA (use_dora=false), or serve merged/"))
    else:
        checks.append(Check("vllm_dora", True, "no DoRA"))
    if adapter.bias != "none":
        checks.append(Check("vllm_bias", False, f"bias={adapter.bias!r}: vLLM refuses adapter bias terms "
                            "(older versions load them only with --enable-lora-bias)",
                            fix="retrain with bias='none', or serve merged/"))
    else:
        checks.append(Check("vllm_bias", True, "bias='none'"))
    if adapter.modules_to_save:
        extras = list(adapter.modules_to_save)
        checks.append(Check("vllm_modules_to_save", False, f"modules_to_save={extras}: vLLM only supports "
                            "modules_to_save being None (fully trained extra modules are not loaded)",
                            fix="retrain without modules_to_save, or serve merged/"))
    else:
        checks.append(Check("vllm_modules_to_save", True, "no modules_to_save"))
    targets = adapter.target_modules
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if not any(_target_matches(t, path) for path in linear_names)]
    if unknown:
        leaves = sorted({path.rsplit(".", 1)[-1] for path in linear_names})
        checks.append(Check("vllm_target_modules", False, f"target module(s) {unknown} match no Linear layer "
                            f"of {architecture}; vLLM checks target names against the architecture at load",
                            fix=f"target only existing Linear names: {', '.join(leaves)}"))
    else:
        checks.append(Check("vllm_target_modules", True,
                            f"every target module is a Linear layer of {architecture}"))
    return checks


def vllm_command(base: str, lora_name: str, adapter_dir: Path, max_lora_rank: int | None,
                 revision: str | None = None, chat_template: Path | None = None) -> str:
    """The `vllm serve` command that loads the base with this adapter, requested as model `lora_name`."""
    parts = ["vllm", "serve", base]
    if revision:
        parts += ["--revision", revision]
    parts += ["--enable-lora", "--lora-modules", f"{lora_name}={adapter_dir}"]
    if max_lora_rank is not None:
        parts += ["--max-lora-rank", str(max_lora_rank)]
    if chat_template is not None:
        parts += ["--chat-template", str(chat_template)]
    return " ".join(parts)


def export_command(run_dir: Path) -> str:
    """The command that ships a run's adapter; the report prints it under the adapter it recommends."""
    return f"python -m harness.export {shlex.quote(str(run_dir))}"


def default_lora_name(run_dir: Path) -> str:
    """`<sweep>-<trial>` for a sweep trial (sweeps/rank/trials/002 -> rank-002), else the directory's name."""
    resolved = Path(run_dir).resolve()
    trial = resolved.parent.name == "trials"
    name = f"{resolved.parent.parent.name}-{resolved.name}" if trial else resolved.name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _allowed_neighbours(rank: int) -> str:
    below = [r for r in VLLM_MAX_LORA_RANKS if r < rank][-1:]
    above = [r for r in VLLM_MAX_LORA_RANKS if r > rank][:1]
    return " or ".join(str(r) for r in below + above)


def _target_matches(target: str, module_path: str) -> bool:
    """PEFT's rule: a name matches a module path exactly or as its last component(s); a string is a regex."""
    return (module_path == target or module_path.endswith("." + target)
            or re.fullmatch(target, module_path) is not None)


# ---------------------------------------------------------------------------------------------------------
# serving.json and export.json


@dataclass
class BaseModelInfo:
    id: str  # as results.json recorded it
    hash: str | None
    quantized: bool  # trained and evaluated on the NF4 base
    compute_dtype: str
    architecture: str
    local_dir: str
    device: str  # where the export's proof ran
    serve_as: str  # what `vllm serve` loads: the hub id, or the local directory


@dataclass
class ServedAdapter:
    path: str | None  # None: not shipped
    hash: str
    r: int
    lora_alpha: float
    use_rslora: bool
    scaling_rule: str
    scaling: float
    target_modules: list[str] | str
    use_dora: bool
    bias: str
    modules_to_save: list[str] | None


@dataclass
class VllmServing:
    servable: bool
    max_lora_rank: int | None
    lora_name: str
    command: str
    checks: list[Check]


@dataclass
class MergedModel:
    merge_into: str  # dequantized_nf4 | original | unquantized
    what_it_changes: str
    dtype: str
    loads_with: str
    path: str | None = None  # None: not shipped


@dataclass
class Proof:
    ok: bool
    checks: list[Check]
    checked_examples: list[str]  # sources of the held-out examples the outputs were compared on


@dataclass
class ServingRecord:
    """serving.json: what to serve, how, and the evidence that it serves as evaluated."""

    exit_code: int
    verdict: str  # one line: what was shipped, or why not
    base_model: BaseModelInfo
    adapter: ServedAdapter
    vllm: VllmServing
    merged: MergedModel
    proof: Proof
    format: str = SERVING_FORMAT


def build_serving_record(adapter: AdapterConfig, adapter_hash: str, base: BaseModelInfo, vllm: list[Check],
                         proof: list[Check], merged: MergedModel, checked_sources: list[str], out_dir: Path,
                         lora_name: str, revision: str | None, chat_template: Path | None) -> ServingRecord:
    """The serving record of an export to `out_dir`; the verdict names the first failed gating check."""
    proof_ok = all(c.ok for c in proof if c.gating)
    vllm_ok = all(c.ok for c in vllm)
    max_rank = vllm_max_lora_rank(adapter.rank)
    command = vllm_command(base.serve_as, lora_name, out_dir / "adapter", max_rank, revision, chat_template)
    if not proof_ok:
        exit_code = ExitCode.NOT_AS_EVALUATED
        failed = next(c for c in proof if c.gating and not c.ok)
        verdict = f"NOT SHIPPED: {failed.name}: {failed.message}"
    elif not vllm_ok:
        exit_code = ExitCode.VLLM_REFUSES
        failed = next(c for c in vllm if not c.ok)
        verdict = (f"SHIPPED {out_dir}, proven as evaluated, but vLLM would refuse the adapter: "
                   f"{failed.message}; fix: {failed.fix}")
    else:
        exit_code = ExitCode.SHIPPED
        verdict = (f"SHIPPED {out_dir}: adapter and merged model proven to behave as evaluated; vLLM can "
                   "serve it")
    served = ServedAdapter(
        path=str(out_dir / "adapter") if proof_ok else None, hash=adapter_hash, r=adapter.r,
        lora_alpha=adapter.lora_alpha, use_rslora=adapter.use_rslora, scaling_rule=adapter.scaling_rule,
        scaling=adapter.scaling(), target_modules=adapter.target_modules, use_dora=adapter.use_dora,
        bias=adapter.bias, modules_to_save=adapter.modules_to_save)
    return ServingRecord(int(exit_code), verdict, base, served,
                         VllmServing(vllm_ok, max_rank, lora_name, command, vllm),
                         replace(merged, path=str(out_dir / "merged") if proof_ok else None),
                         Proof(proof_ok, proof, checked_sources))


@dataclass
class ExportRecord:
    """One export of a run: where from, with which overrides, its serving record, and the files it wrote."""

    run_dir: str
    results: str  # the results.json the proof compared with
    overrides: list[str]
    created_at: str
    exit_code: int
    verdict: str
    serving: ServingRecord
    git_revision: str
    library_versions: dict[str, str]
    device: str
    wall_time_s: float
    files: list[str] = field(default_factory=list)  # relative to the export directory


@dataclass
class ExportHistory:
    """export.json: the latest export of a directory and the ones it replaced (newest first)."""

    export: ExportRecord
    previous: list[ExportRecord] = field(default_factory=list)
    format: str = EXPORT_FORMAT


# ---------------------------------------------------------------------------------------------------------
# serving_card.md


def serving_card(serving: ServingRecord, run_dir: str, created_at: str, seconds: float) -> str:
    """serving.json for a reader: what to serve, the exact command, the evidence it serves as evaluated."""
    base, adapter, vllm, merged, proof = (serving.base_model, serving.adapter, serving.vllm, serving.merged,
                                          serving.proof)
    targets = adapter.target_modules
    targets = (", ".join(md_code(t) for t in targets) if isinstance(targets, list)
               else f"regex {md_code(targets)}")
    extras = ", ".join(md_code(m) for m in adapter.modules_to_save) if adapter.modules_to_save else "none"
    held = "quantized (NF4)" if base.quantized else "unquantized"
    rslora = " (rsLoRA)" if adapter.use_rslora else ""
    checked = proof.checked_examples
    lines = [
        "# Serving card",
        "",
        f"**{md_escape(serving.verdict)}**",
        "",
        (f"Run {md_code(run_dir)}, exported {md_escape(created_at)} in {seconds:.1f} s on "
         f"{md_escape(base.device)}."),
        "",
        "## Base model",
        f"- id {md_code(base.id)}, hash {md_code(base.hash)}, architecture {md_escape(base.architecture)}",
        (f"- trained and evaluated {held}, {md_escape(base.compute_dtype)} compute; weights "
         f"{md_code(base.local_dir)}"),
        "",
        "## Adapter",
        (f"- rank {adapter.r}, lora_alpha {adapter.lora_alpha:g}, scaling {adapter.scaling_rule} = "
         f"{adapter.scaling:g}{rslora}"),
        f"- target modules: {targets}",
        f"- DoRA {adapter.use_dora}, bias {md_code(adapter.bias)}, modules_to_save {extras}",
        f"- hash {md_code(adapter.hash)}; files {md_code(adapter.path or 'not shipped')}",
        "",
        "## vLLM: one base, adapters hot-swapped",
        *md_fence(vllm.command),
        f"Request model {md_code(vllm.lora_name)}. vLLM's LoRA constraints:",
        *[_card_line(c, "REFUSED") for c in vllm.checks],
    ]
    if base.quantized:
        lines += ["", ("The adapter was trained and evaluated on the NF4-quantized base. Served by vLLM on "
                       "the full-precision base above, it runs a slightly different model (by the NF4 "
                       "quantization error); to serve exactly what was evaluated, serve `merged/`.")]
    if adapter.use_rslora:
        lines += ["", ("rsLoRA: some servers (SGLang) apply alpha/r instead of alpha/sqrt(r), with no error. "
                       "Serve `merged/` there, or compare the server's outputs with the proof below.")]
    lines += [
        "",
        "## Merged model: runtimes without LoRA (llama.cpp, Ollama)",
        (f"- {md_code(merged.path or 'not shipped')}: {md_escape(merged.dtype)} safetensors with the "
         f"tokenizer; loads with {md_code(merged.loads_with)}"),
        f"- merge {md_code(merged.merge_into)}: {md_escape(merged.what_it_changes)}",
        "",
        "## Proof: serves as evaluated",
        *[_card_line(c, "FAILED") for c in proof.checks],
        (f"- checked on the first {len(checked)} held-out examples ({md_escape(checked[0])} to "
         f"{md_escape(checked[-1])})" if checked else "- checked on no held-out examples"),
        "",
    ]
    return "\n".join(lines)


def _card_line(check: Check, failed: str) -> str:
    status = "ok" if check.ok else (failed if check.gating else "note")
    fix = f" Fix: {md_escape(check.fix)}." if check.fix and not check.ok else ""
    return f"- {status} {md_code(check.name)}: {md_escape(check.message)}.{fix}"


# Code spans and blocks for strings from data or config (ids, paths, commands); harness.render has escaping
# for Markdown text (md_escape) but none for code yet. Both make any backticks in the value inert.


def _one_line(value) -> str:
    return " ".join(str(value).splitlines())


def md_code(value) -> str:
    """`value` as a code span showing it literally, whatever backticks it holds (CommonMark: longer fence)."""
    text = _one_line(value)
    if not text.strip():
        return "` `"
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_fence(value) -> list[str]:
    """`value` as a fenced code block (lines) that no line of it can close."""
    text = str(value)
    fence = "`" * max(3, max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return [fence, *text.splitlines(), fence]
