"""quantize: model + calibration → int8 checkpoint (int8 weights, static activation qparams, per-layer error)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip.artifact import EXTERNAL, Artifact, carry_forward, open_artifact, strict_json, write_manifest
from llmzip.config import (
    QuantizeConfig,
    SaturationFix,
    WeightAlgorithm,
    to_dict,
)
from llmzip.data import data_paths
from llmzip.errors import ArtifactError, ConfigError, ModelError
from llmzip.modeling import QUANT_FILE, load_model, load_tokenizer, source_config
from llmzip.outputs import staging
from llmzip.progress import step
from llmzip.quant import attention, qmath, sensitivity
from llmzip.quant.awq import awq_maker
from llmzip.quant.calibration import SAMPLES_FILE, linear_names, read_observers, read_samples, record
from llmzip.quant.fallback import accuracy_aware
from llmzip.quant.gptq import weight_only_maker
from llmzip.quant.int8 import activation_range, attention_quants, quantize_linear, smoothed_weight, smoothing_factors
from llmzip.quant.lm_fallback import perplexity_aware
from llmzip.quant.modules import QuantEmbedding, replace_linears, scaled_like, select
from llmzip.quant.observers import HistogramObserver
from llmzip.quant.report import error_report, perplexity_gate
from llmzip.quant.saturation import SCORES, fix_saturation
from llmzip.quant.source import (
    SourceBlocks,
    block_spec,
    embedding_table,
    resolve_algorithm,
    source_maker,
    source_metrics,
)
from llmzip.quant.weight_only import BlockEmbedding, SharedEmbedding
from llmzip.runtime import hardware
from llmzip.shrink.embeddings import inner_table
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", EXTERNAL)


@dataclass
class _Run:
    """What one quantize run knows, filled in order by the steps below (each under ~80 lines)."""

    config: QuantizeConfig
    model_dir: Path
    calibration_dir: Path
    source: Artifact
    calib: Artifact
    task: Any
    weight_only: bool
    algorithm: WeightAlgorithm
    blocks: SourceBlocks | None
    observers: dict[str, HistogramObserver]
    samples: list[dict[str, Any]]
    fp32: Any = None
    names: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    tokenizer: Any = None
    batches: list[Any] = field(default_factory=list)
    held: list[Any] = field(default_factory=list)  # a causal LM's held-back windows (report and perplexity gate)
    fit: list[Any] = field(default_factory=list)  # the windows the weight algorithm may see
    smooth: dict[str, torch.Tensor] = field(default_factory=dict)
    act_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    head: str | None = None
    base: Any = None  # the float model the quantized layers are cut from (AWQ: its scaled, equivalent twin)
    make: Any = None
    gptq_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    tied: bool = False
    quantized: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    attention_names: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    shared: str | None = None
    own_table: Any = None
    saturation: dict[str, Any] = field(default_factory=lambda: {"layers": {}})

    @property
    def perplexity_metric(self) -> bool:
        return bool(self.task.metric == "perplexity")  # next-token logits: the perplexity report and gate

    def bits_of(self, name: str) -> int:
        if self.blocks is not None and self.blocks.has(f"{name}.weight"):
            return int(self.blocks.entry(f"{name}.weight")["bits"])
        c = self.config
        return c.head_bits if name == self.head and c.head_bits is not None else c.weight_bits


def quantize(
    model_dir: Path, calibration_dir: Path, out_dir: Path, *, config: QuantizeConfig, overwrite: bool = False
) -> Path:
    """Quantize `model_dir` with the activation ranges recorded in `calibration_dir`."""
    started = time.time()
    run = _open(Path(model_dir), Path(calibration_dir), config)
    inputs = [run.source.path, run.calib.path, *data_paths(config.data)]
    with staging(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
        step(f"loading {model_dir}")
        run.fp32 = load_model(run.source)
        _select_and_observe(run)
        _layer_maker(run)
        _quantized_model(run, Path(out_dir), tmp)
        _attention_and_embeddings(run)
        target = hardware.resolve(config.target_cpu)
        run.extra["target_cpu"] = target.value
        if not run.weight_only and hardware.saturates(target):
            fp32 = run.fp32
            floats = {} if config.qat_steps > 0 else {n: smoothed_weight(fp32, n, run.smooth.get(n)) for n in run.names}
            run.saturation = run.extra["saturation"] = fix_saturation(
                run.quantized,
                run.batches,
                fix_all=config.saturation_fix is SaturationFix.ALL,
                margin=config.saturation_margin,
                float_weights=floats,
                symmetric=config.weight_symmetric,
                on_step=step,
            )
        report = _error_report(run)
        _write(run, tmp, report, target, started)
    return out_dir


def _open(model_dir: Path, calibration_dir: Path, config: QuantizeConfig) -> _Run:
    """The inputs, checked before anything is written: the calibration was recorded on this model, as it is now."""
    source: Artifact = open_artifact(model_dir, verb="quantize", accepts=ACCEPTS, role="model directory")
    calib = open_artifact(calibration_dir, verb="quantize", accepts=("calibrate",), role="calibration directory")
    parents = calib.manifest.get("parents")
    if not isinstance(parents, list) or not parents or not isinstance(parents[0], dict):
        raise ArtifactError(f"{calibration_dir}: its manifest names no model it was recorded on; re-run calibrate")
    recorded_on = parents[0]
    if recorded_on.get("sha256") != source.hash:
        same_path = Path(str(recorded_on.get("path"))).resolve() == model_dir.resolve()
        where = f"an earlier version of {model_dir} (it changed since)" if same_path else recorded_on.get("path")
        raise ArtifactError(
            f"{calibration_dir} was recorded on {where}, not on {model_dir} as it is now; "
            f"run `llmzip calibrate {model_dir}` and pass that directory"
        )
    task = checked_task(config, source_config(source.path), model_dir)
    weight_only = config.weight_only or task.weight_only
    algorithm = resolve_algorithm(config, source.path, weight_only)
    samples = read_samples(calib.path)
    if not samples:
        raise ArtifactError(
            f"{calibration_dir} keeps no calibration samples (its {SAMPLES_FILE} is empty); re-run `llmzip calibrate`"
        )
    return _Run(
        config=config,
        model_dir=model_dir,
        calibration_dir=calibration_dir,
        source=source,
        calib=calib,
        task=task,
        weight_only=weight_only,
        algorithm=algorithm,
        blocks=SourceBlocks(source.path, source.manifest) if algorithm is WeightAlgorithm.SOURCE else None,
        observers=read_observers(calib.path),
        samples=samples,
    )


def _select_and_observe(run: _Run) -> None:
    """The layers to quantize, the calibration batches, SmoothQuant's factors and each layer's activation range."""
    config, fp32, blocks = run.config, run.fp32, run.blocks
    run.exclude = config.exclude if config.exclude is not None else run.task.default_exclude
    names = select(fp32, linear_names(fp32), run.exclude)
    if blocks is not None:  # a weight that was float in the GGUF file stays float: that is exact
        names = [n for n in names if blocks.has(f"{n}.weight") or not blocks.entry(f"{n}.weight").get("exact")]
    if not names:
        raise ConfigError(f"exclude: the patterns {run.exclude} leave no Linear layer to quantize")
    missing = [n for n in names if n not in run.observers]
    if missing:
        raise ArtifactError(f"{run.calibration_dir} has no statistics for {missing[0]}; re-run `llmzip calibrate`")
    run.names = names
    run.tokenizer = load_tokenizer(run.source.path)
    run.batches = run.task.batches(
        run.tokenizer,
        run.samples,
        max_length=run.calib.manifest["config"]["data"]["max_length"],
        batch_size=run.task.eval_batch_size,
    )
    if config.smoothquant is not None:
        run.smooth = smoothing_factors(fp32, names, run.observers, config.smoothquant)
        # The int8 layers see x / s: observe that (on the kept calibration samples) to fit its range.
        inverse = {n: 1.0 / s for n, s in run.smooth.items()}
        bins = run.calib.manifest["config"].get("bins", 2048)
        seen = record(
            fp32, run.batches, names, bins=bins, scale_inputs=inverse, description="re-observing smoothed inputs"
        )
        run.observers = {**run.observers, **seen}
    run.act_ranges = {n: activation_range(run.observers[n], config) for n in names}
    run.head = run.task.output_head(fp32)
    # A tied embedding whose head goes weight-only reads the head's codes (one table, as onnxruntime's
    # GatherBlockQuantized does); otherwise the table gets its own int8 rows. --fp32-embeddings keeps a table of
    # its own.
    tied = bool(getattr(fp32.config, "tie_word_embeddings", False)) and run.weight_only and run.head in names
    run.tied = tied and config.embeddings
    # A causal LM holds back the last quarter of its calibration windows: the report and the perplexity gate
    # measure on text the weight algorithm (GPTQ's Hessians) never saw.
    if run.perplexity_metric and len(run.batches) > 1:
        run.held = run.batches[-max(1, len(run.batches) // 4) :]
    run.fit = run.batches[: len(run.batches) - len(run.held)]


def _layer_maker(run: _Run) -> None:
    """`make(name, linear)` → the quantized layer: int8 with activation ranges, or weight-only (RTN, GPTQ, AWQ, the
    source's own blocks)."""
    config = run.config
    run.base = run.fp32
    if not run.weight_only:

        def make(name: str, lin: nn.Linear) -> nn.Module:
            return quantize_linear(lin, run.act_ranges[name], config, run.smooth.get(name))

        run.make = make
        return
    make, run.gptq_stats = weight_only_maker(
        run.fp32,
        run.names,
        run.fit,
        bits_of=run.bits_of,
        block_size=config.weight_block_size,
        symmetric=config.weight_symmetric,
        gptq=run.algorithm is WeightAlgorithm.GPTQ,
        damp=config.gptq_damp,
    )
    if run.blocks is not None:
        make = source_maker(run.blocks, rounding=make)
    if run.algorithm is WeightAlgorithm.AWQ:
        run.base, make, run.gptq_stats = awq_maker(
            run.fp32,
            run.names,
            run.fit,
            bits_of=run.bits_of,
            block=config.weight_block_size,
            symmetric=config.weight_symmetric,
            rounding=make,
        )
    run.make = make
    step(f"weight-only ({run.algorithm.value}) on {len(run.names)} layers")


def _quantized_model(run: _Run, out_dir: Path, tmp: Path) -> None:
    """The quantized model: every selected layer made, after the accuracy/perplexity-aware fallback chose which
    stay fp32, or trained with QAT."""
    config = run.config
    if run.perplexity_metric and (config.sensitivity or config.max_perplexity_increase is not None):
        run.names, run.extra = perplexity_aware(run.base, run.names, run.make, run.tokenizer, config, tmp)
        run.tied = run.tied and run.head in run.names  # a head kept fp32 leaves the embedding its own table
    elif config.sensitivity or config.max_accuracy_drop is not None:
        run.names, run.extra = accuracy_aware(run.fp32, run.names, run.make, run.batches, run.tokenizer, config, tmp)
    if config.qat_steps > 0:
        from llmzip.quant.qat import train
        from llmzip.training import work_dir

        run.quantized, qat_metrics = train(
            run.fp32, run.names, run.make, run.tokenizer, config, work_dir(out_dir), quantize_linear
        )
        shutil.rmtree(work_dir(out_dir), ignore_errors=True)
        run.extra.update(qat_metrics)
    else:
        run.quantized = sensitivity.with_quantized(run.base, run.names, run.make)


def _attention_and_embeddings(run: _Run) -> None:
    """--attention's int8 matmuls, and the word-embedding table as int8 rows (or the tied head's codes)."""
    config, fp32, quantized, blocks = run.config, run.fp32, run.quantized, run.blocks
    if config.attention:
        run.attention_names = select(fp32, attention.attention_module_names(fp32), run.exclude)
        if not run.attention_names:
            raise ConfigError(
                f"attention: {type(fp32).__name__} has no attention module llmzip can quantize (its attention "
                "does not go through transformers' AttentionInterface, or --exclude removed them); drop --attention"
            )
        quants = attention_quants(run.attention_names, run.observers, config, run.calibration_dir)
        attention.attach(quantized, quants)
    if not config.embeddings:
        return
    # A pruned/factorized table (llmzip/shrink/embeddings.py) keeps its wrapper: only the inner id → row table
    # becomes int8 rows, recorded by its own name so that load_quantized finds it after structure.restore.
    table: Any = inner_table(fp32.get_input_embeddings())
    run.embeddings = [n for n, m in fp32.named_modules() if m is table]
    tied = run.tied
    run.shared = run.head if tied else None
    head_module: Any = quantized.get_submodule(str(run.head)) if tied else None
    own = embedding_table(blocks, run.embeddings[0], table) if blocks is not None and not tied else None
    run.own_table = own

    def make(name: str, e: Any) -> Any:
        inner = SharedEmbedding(head_module) if tied else BlockEmbedding(own) if own else QuantEmbedding.from_float(e)
        return scaled_like(inner, e)

    replace_linears(quantized, run.embeddings, make)
    table_q: Any = quantized.get_submodule(run.embeddings[0])
    run.extra["embedding"] = {
        "module": run.embeddings[0],
        "shares": run.shared,
        "weight_sqnr_db": round(qmath.sqnr_db(table.weight, table_q.weight), 2),
        **({"source": blocks.describe(run.embeddings[0])} if blocks is not None else {}),
    }


def _error_report(run: _Run) -> dict[str, Any]:
    """Per-layer and output error vs fp32 on held-back (causal LM) or calibration batches; the perplexity gate."""
    measured = run.held or run.batches[: run.task.report_batches]
    where = "held-back " if run.held else ""
    step(f"measuring quantization error on {len(measured)} {where}calibration batches")
    report = error_report(run.fp32, run.quantized, run.names, measured, next_token=run.perplexity_metric)
    if run.perplexity_metric:
        perplexity_gate(report, run.config.max_perplexity_ratio, len(measured), held=bool(run.held))
    for name in run.names:
        if run.gptq_stats.get(name):
            report["layers"][name]["gptq"] = run.gptq_stats[name]
        if not run.weight_only:
            lo, hi = run.act_ranges[name]
            observed = [run.observers[name].min, run.observers[name].max]
            report["layers"][name].update(range=[round(lo, 6), round(hi, 6)], observed=observed)
    return report


def _write(run: _Run, tmp: Path, report: dict[str, Any], target: Any, started: float) -> None:
    """The int8 checkpoint, quantization.json (how to rebuild each layer), the samples and the manifest."""
    from safetensors.torch import save_file

    config, blocks, names = run.config, run.blocks, run.names
    state = {k: v.detach().contiguous().clone() for k, v in run.quantized.state_dict().items()}
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{key}: NaN/Inf after quantization (a degenerate calibration range); re-calibrate")
    # One metadata key: safetensors writes a Rust HashMap, so two keys come out in a random order and the
    # same model would get different bytes (and manifest hashes) run to run. quantization.json says "int8".
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    layers = {
        n: {
            "op": "Linear",
            "smooth": n in run.smooth,
            "weight_bits": run.bits_of(n),
            "weight_only": run.weight_only,
            **block_spec(run.quantized.get_submodule(n)),
            # weight rows stored on a 7-bit grid so that the target CPU's int16 pair sums cannot saturate
            "rows_7bit": run.saturation["layers"].get(n, {}).get("fixed_rows", 0),
        }
        for n in names
    }
    spec = {
        "scheme": to_dict(config),
        "layers": layers,
        "embeddings": run.embeddings,
        "embeddings_shared_with": run.shared,
        "embedding_blocks": block_spec(run.own_table) if run.own_table is not None else None,
        "attention": run.attention_names,
        "attention_key_bits": {
            n.removesuffix(SCORES): layer["key_bits"]
            for n, layer in run.saturation["layers"].items()
            if n.endswith(SCORES) and layer["key_bits"] != 8
        },
        "target_cpu": target.value,
    }
    (tmp / QUANT_FILE).write_text(strict_json(spec, where=QUANT_FILE, indent=1))
    shutil.copy2(run.calib.path / SAMPLES_FILE, tmp / SAMPLES_FILE)
    carry_forward(run.source.path, tmp, config=run.fp32.config)
    metrics = {
        "quantized_layers": len(names),
        "target": config.target.value,
        "fp32_linear_layers": len(linear_names(run.fp32)) - len(names),
        "quantized_attention_matmuls": 2 * len(run.attention_names),
        "method": "weight-only" if run.weight_only else config.method.value,
        "weight_bits": config.weight_bits if blocks is None else None,  # a source's blocks: per layer
        "weight_only": run.weight_only,
        "algorithm": run.algorithm.value if run.weight_only else None,
        **(source_metrics(blocks, names) if blocks is not None else {}),
        "head_bits": run.bits_of(run.head) if run.head in names else None,
        "exclude": run.exclude,
        "task": run.task.kind.value,
        **report,
        **run.extra,
    }
    write_manifest(
        tmp,
        stage="quantize",
        parents=[run.source, run.calib],
        inputs={},
        config=to_dict(config),
        metrics=metrics,
        seed=config.seed,
        started=started,
    )
