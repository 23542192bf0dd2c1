"""quantize: model + calibration → int8 checkpoint (int8 weights, static activation qparams, per-layer error)."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip.artifact import EXTERNAL, Artifact, carry_forward, open_artifact, strict_json, write_manifest
from llmzip.config import (
    Activations,
    CalibrationMethod,
    Granularity,
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
from llmzip.quant import attention, qmath, ranges, sensitivity
from llmzip.quant.awq import awq_maker
from llmzip.quant.calibration import SAMPLES_FILE, linear_names, read_observers, read_samples, record
from llmzip.quant.fallback import accuracy_aware
from llmzip.quant.gptq import weight_only_maker
from llmzip.quant.lm_fallback import perplexity_aware
from llmzip.quant.modules import QuantEmbedding, QuantLinear, replace_linears, scaled_like
from llmzip.quant.observers import HistogramObserver
from llmzip.quant.report import error_report, first_collapse
from llmzip.quant.saturation import SCORES, fix_saturation
from llmzip.quant.source import SourceBlocks, embedding_table
from llmzip.quant.source import available as source_blocks_available
from llmzip.quant.weight_only import BlockEmbedding, SharedEmbedding, WeightOnlyLinear
from llmzip.runtime import hardware
from llmzip.shrink.embeddings import inner_table
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", EXTERNAL)


def select(model: nn.Module, names: list[str], exclude: list[str]) -> list[str]:
    """Drop the names an exclude entry matches: a regex on the module name, or `type:Class` on the class name of
    the module or of its parent (e.g. `type:BertOutput` keeps every FFN output projection in fp32)."""
    types = {e.removeprefix("type:") for e in exclude if e.startswith("type:")}
    try:
        patterns = [re.compile(p) for p in exclude if not p.startswith("type:")]
    except re.error as err:
        raise ConfigError(f"exclude: {err.pattern!r} is not a valid regular expression ({err})") from None

    def classes(name: str) -> set[str]:
        parent = name.rpartition(".")[0]
        return {type(model.get_submodule(name)).__name__, type(model.get_submodule(parent)).__name__}

    return [n for n in names if not any(p.search(n) for p in patterns) and not (types & classes(n))]


def activation_range(obs: HistogramObserver, config: QuantizeConfig) -> tuple[float, float]:
    if config.method is CalibrationMethod.PERCENTILE:
        return ranges.percentile(obs, config.percentile)
    return ranges.METHODS[config.method.value](obs)


def smoothing_factors(
    model: nn.Module, names: list[str], observers: dict[str, HistogramObserver], alpha: float
) -> dict[str, torch.Tensor]:
    """SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^α / max|W_:,j|^(1−α) per input channel j.

    Dividing the input by s and multiplying the weight's columns by s leaves x @ Wᵀ unchanged while moving the
    activation outliers (e.g. FFN2's GELU output) into the weights, which per-channel quantization handles well.
    """
    factors = {}
    for name in names:
        act = observers[name].channel_absmax
        if act is None:
            raise ArtifactError(f"the calibration has no per-channel statistics for {name}; re-run `llmzip calibrate`")
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        weight = linear.weight.detach().abs().amax(0)
        factors[name] = (act.clamp(min=1e-5) ** alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5).float()
    return factors


def _smoothed(model: nn.Module, name: str, smooth: torch.Tensor | None) -> torch.Tensor:
    linear = model.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    weight = linear.weight.detach().float()
    return weight * smooth[None, :] if smooth is not None else weight


def quantize_linear(
    linear: nn.Linear, act_range: tuple[float, float], config: QuantizeConfig, smooth: torch.Tensor | None = None
) -> QuantLinear:
    """Build the int8 layer: weight scales from the weight, input scale/zero point from the activation range."""
    per_channel = config.weight_granularity is Granularity.PER_CHANNEL
    weight = linear.weight.detach().float() * smooth[None, :] if smooth is not None else linear.weight.detach().float()
    a_range = qmath.qrange(8, signed=config.activation_symmetric, symmetric=config.activation_symmetric)
    lo, hi = torch.tensor(act_range[0]), torch.tensor(act_range[1])
    if config.activation_symmetric:
        a_scale, a_zp = qmath.symmetric_qparams(torch.maximum(lo.abs(), hi.abs()), a_range)
    else:
        a_scale, a_zp = qmath.asymmetric_qparams(lo, hi, a_range)

    layer = QuantLinear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        per_channel=per_channel,
        activation_signed=config.activation_symmetric,
        smooth=smooth is not None,
        dynamic=config.activations is Activations.DYNAMIC,
    )
    layer.set_weight(weight, bits=config.weight_bits, symmetric=config.weight_symmetric)
    with torch.no_grad():
        if smooth is not None and layer.input_smooth is not None:
            layer.input_smooth.copy_(1.0 / smooth)
        layer.input_scale.copy_(a_scale)
        layer.input_zero_point.copy_(a_zp.to(layer.input_zero_point.dtype))
        if linear.bias is not None and layer.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer


def attention_quants(
    names: list[str], observers: dict[str, HistogramObserver], config: QuantizeConfig, calibration_dir: Path
) -> dict[str, attention.AttentionQuant]:
    """Static qparams for each attention module's query/key/value from the calibration histograms."""
    quants = {}
    for name in names:
        keys = {t: f"{name}:{t}" for t in attention.TENSORS}
        if any(k not in observers for k in keys.values()):
            raise ArtifactError(
                f"{calibration_dir} has no attention statistics for {name} (calibrated before llmzip recorded them, "
                "or the model does not use transformers' attention interface); re-run `llmzip calibrate` or drop "
                "--attention"
            )
        quants[name] = attention.AttentionQuant.from_ranges(
            {t: activation_range(observers[k], config) for t, k in keys.items()}
        )
    return quants


def resolve_algorithm(config: QuantizeConfig, model_dir: Path, weight_only: bool) -> WeightAlgorithm:
    """--algorithm as given; unset, a model imported from a GGUF file keeps its source's blocks (unless a bit width
    or block layout of its own is asked for), any other rounds to nearest."""
    if config.algorithm is not None:
        if config.algorithm is WeightAlgorithm.SOURCE and not weight_only:
            raise ConfigError("--algorithm source keeps weight-only blocks: add --weight-only (or use a causal LM)")
        return config.algorithm
    default = QuantizeConfig()
    layout = ("weight_bits", "weight_block_size", "weight_symmetric", "head_bits")
    own_layout = any(getattr(config, k) != getattr(default, k) for k in layout)
    if weight_only and source_blocks_available(model_dir) and not own_layout:
        return WeightAlgorithm.SOURCE
    return WeightAlgorithm.RTN


def _block_spec(layer: Any) -> dict[str, Any]:
    """How to rebuild a weight-only layer (or table) whose blocks are not the scheme's (a GGUF source's)."""
    if not isinstance(layer, WeightOnlyLinear):
        return {}
    return {
        "block_size": layer.block_size,
        "bits": layer.bits,
        "symmetric": layer.weight_zero_point is None,
        "offset": layer.weight_offset is not None,
    }


def _perplexity_gate(report: dict[str, Any], ratio: float, windows: int, *, held: bool) -> None:
    """A causal LM whose perplexity on the measured windows rises beyond `ratio` × its fp32 model's is broken, not
    merely rounded (int4 costs percents, not multiples): fail, naming the first layer whose output SQNR collapses."""
    ppl = report["perplexity"]
    if ppl["quantized"] <= ratio * ppl["fp32"]:
        return
    name, layer = first_collapse(report["layers"])
    where = "held-back calibration windows" if held else "calibration windows"
    raise ModelError(
        f"the quantized model's perplexity on {windows} {where} is {ppl['quantized']:.4g} vs {ppl['fp32']:.4g} in "
        f"fp32 (> {ratio:g}×, --max-perplexity-ratio); output SQNR collapses first at {name} "
        f"({layer['output_sqnr_db']} dB, its weight {layer['weight_sqnr_db']} dB): something the model computes "
        "around that layer is lost, report it with the model's config"
    )


def _source_metrics(blocks: SourceBlocks, names: list[str]) -> dict[str, Any]:
    described = {n: blocks.describe(n) for n in names}
    types: dict[str, int] = {}
    for d in described.values():
        key = str(d.get("type", "?")) + ("" if d.get("exact") else " (rounded)")
        types[key] = types.get(key, 0) + 1
    return {"source_types": dict(sorted(types.items())), "source_blocks": described}


def source_maker(blocks: SourceBlocks, *, rounding: Any) -> Any:
    """Each Linear from the source's blocks; one whose GGUF type has no exact form is rounded (named in the
    manifest's source_blocks)."""

    def make(name: str, linear: nn.Linear) -> nn.Module:
        return blocks.layer(name, linear) if blocks.has(f"{name}.weight") else rounding(name, linear)

    return make


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
            floats = {} if config.qat_steps > 0 else {n: _smoothed(fp32, n, run.smooth.get(n)) for n in run.names}
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
        _perplexity_gate(report, run.config.max_perplexity_ratio, len(measured), held=bool(run.held))
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
            **_block_spec(run.quantized.get_submodule(n)),
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
        "embedding_blocks": _block_spec(run.own_table) if run.own_table is not None else None,
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
    carry_forward(run.source.path, tmp)
    metrics = {
        "quantized_layers": len(names),
        "fp32_linear_layers": len(linear_names(run.fp32)) - len(names),
        "quantized_attention_matmuls": 2 * len(run.attention_names),
        "method": "weight-only" if run.weight_only else config.method.value,
        "weight_bits": config.weight_bits if blocks is None else None,  # a source's blocks: per layer
        "weight_only": run.weight_only,
        "algorithm": run.algorithm.value if run.weight_only else None,
        **(_source_metrics(blocks, names) if blocks is not None else {}),
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
