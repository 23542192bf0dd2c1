"""quantize: model + calibration → int8 checkpoint (int8 weights, static activation qparams, per-layer error)."""

from __future__ import annotations

import re
import shutil
import time
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


def quantize(
    model_dir: Path, calibration_dir: Path, out_dir: Path, *, config: QuantizeConfig, overwrite: bool = False
) -> Path:
    """Quantize `model_dir` with the activation ranges recorded in `calibration_dir`."""
    from safetensors.torch import save_file

    started = time.time()
    source: Artifact = open_artifact(Path(model_dir), verb="quantize", accepts=ACCEPTS, role="model directory")
    calib = open_artifact(Path(calibration_dir), verb="quantize", accepts=("calibrate",), role="calibration directory")
    parents = calib.manifest.get("parents")
    if not isinstance(parents, list) or not parents or not isinstance(parents[0], dict):
        raise ArtifactError(f"{calibration_dir}: its manifest names no model it was recorded on; re-run calibrate")
    recorded_on = parents[0]
    if recorded_on.get("sha256") != source.hash:
        same_path = Path(str(recorded_on.get("path"))).resolve() == Path(model_dir).resolve()
        where = f"an earlier version of {model_dir} (it changed since)" if same_path else recorded_on.get("path")
        raise ArtifactError(
            f"{calibration_dir} was recorded on {where}, not on {model_dir} as it is now; "
            f"run `llmzip calibrate {model_dir}` and pass that directory"
        )
    task = checked_task(config, source_config(source.path), model_dir)
    weight_only = config.weight_only or task.weight_only
    algorithm = resolve_algorithm(config, source.path, weight_only)
    blocks = SourceBlocks(source.path, source.manifest) if algorithm is WeightAlgorithm.SOURCE else None
    observers = read_observers(calib.path)
    samples = read_samples(calib.path)
    if not samples:
        raise ArtifactError(
            f"{calibration_dir} keeps no calibration samples (its {SAMPLES_FILE} is empty); re-run `llmzip calibrate`"
        )
    with staging(out_dir, overwrite=overwrite, inputs=[source.path, calib.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model_dir}")
        fp32 = load_model(source)
        exclude = config.exclude if config.exclude is not None else task.default_exclude
        names = select(fp32, linear_names(fp32), exclude)
        if blocks is not None:  # a weight that was float in the GGUF file stays float: that is exact
            names = [n for n in names if blocks.has(f"{n}.weight") or not blocks.entry(f"{n}.weight").get("exact")]
        if not names:
            raise ConfigError(f"exclude: the patterns {exclude} leave no Linear layer to quantize")
        perplexity_metric = task.metric == "perplexity"  # next-token logits: the perplexity report and gate
        missing = [n for n in names if n not in observers]
        if missing:
            raise ArtifactError(f"{calibration_dir} has no statistics for {missing[0]}; re-run `llmzip calibrate`")
        tokenizer = load_tokenizer(source.path)
        batches = task.batches(
            tokenizer,
            samples,
            max_length=calib.manifest["config"]["data"]["max_length"],
            batch_size=task.eval_batch_size,
        )
        smooth: dict[str, torch.Tensor] = {}
        if config.smoothquant is not None:
            smooth = smoothing_factors(fp32, names, observers, config.smoothquant)
            # The int8 layers see x / s: observe that (on the kept calibration samples) to fit its range.
            inverse = {n: 1.0 / s for n, s in smooth.items()}
            bins = calib.manifest["config"].get("bins", 2048)
            observers = {
                **observers,
                **record(
                    fp32, batches, names, bins=bins, scale_inputs=inverse, description="re-observing smoothed inputs"
                ),
            }
        act_ranges = {n: activation_range(observers[n], config) for n in names}
        head = task.output_head(fp32)

        def bits_of(name: str) -> int:
            if blocks is not None and blocks.has(f"{name}.weight"):
                return int(blocks.entry(f"{name}.weight")["bits"])
            return config.head_bits if name == head and config.head_bits is not None else config.weight_bits

        gptq_stats: dict[str, dict[str, float]] = {}
        # A tied embedding whose head goes weight-only reads the head's codes (one table, as onnxruntime's
        # GatherBlockQuantized does); otherwise the table gets its own int8 rows.
        tied = bool(getattr(fp32.config, "tie_word_embeddings", False)) and weight_only and head in names
        tied = tied and config.embeddings  # --fp32-embeddings keeps a table of its own
        # A causal LM holds back the last quarter of its calibration windows: the report and the perplexity gate
        # below measure on text the weight algorithm (GPTQ's Hessians) never saw.
        gated = perplexity_metric and len(batches) > 1
        held = batches[-max(1, len(batches) // 4) :] if gated else []
        fit = batches[: len(batches) - len(held)]
        base = fp32  # the float model the quantized layers are cut from (AWQ: its scaled, equivalent twin)
        if weight_only:
            make, gptq_stats = weight_only_maker(
                fp32,
                names,
                fit,
                bits_of=bits_of,
                block_size=config.weight_block_size,
                symmetric=config.weight_symmetric,
                gptq=algorithm is WeightAlgorithm.GPTQ,
                damp=config.gptq_damp,
            )
            if blocks is not None:
                make = source_maker(blocks, rounding=make)
            if algorithm is WeightAlgorithm.AWQ:
                base, make, gptq_stats = awq_maker(
                    fp32,
                    names,
                    fit,
                    bits_of=bits_of,
                    block=config.weight_block_size,
                    symmetric=config.weight_symmetric,
                    rounding=make,
                )
            step(f"weight-only ({algorithm.value}) on {len(names)} layers")
        else:

            def make(name: str, lin: nn.Linear) -> nn.Module:
                return quantize_linear(lin, act_ranges[name], config, smooth.get(name))

        extra: dict[str, Any] = {}
        if perplexity_metric and (config.sensitivity or config.max_perplexity_increase is not None):
            names, extra = perplexity_aware(base, names, make, tokenizer, config, tmp)
            tied = tied and head in names  # a head kept fp32 leaves the embedding its own table
        elif config.sensitivity or config.max_accuracy_drop is not None:
            names, extra = accuracy_aware(fp32, names, make, batches, tokenizer, config, tmp)
        if config.qat_steps > 0:
            from llmzip.quant.qat import train
            from llmzip.training import work_dir

            quantized, qat_metrics = train(fp32, names, make, tokenizer, config, work_dir(out_dir), quantize_linear)
            shutil.rmtree(work_dir(out_dir), ignore_errors=True)
            extra.update(qat_metrics)
        else:
            quantized = sensitivity.with_quantized(base, names, make)
        attention_names: list[str] = []
        if config.attention:
            attention_names = select(fp32, attention.attention_module_names(fp32), exclude)
            if not attention_names:
                raise ConfigError(
                    f"attention: {type(fp32).__name__} has no attention module llmzip can quantize (its attention "
                    "does not go through transformers' AttentionInterface, or --exclude removed them); drop --attention"
                )
            attention.attach(quantized, attention_quants(attention_names, observers, config, calibration_dir))
        embeddings: list[str] = []
        shared = None
        if config.embeddings:
            # A pruned/factorized table (llmzip/shrink/embeddings.py) keeps its wrapper: only the inner id → row table
            # becomes int8 rows, recorded by its own name so that load_quantized finds it after structure.restore.
            table: Any = inner_table(fp32.get_input_embeddings())
            embeddings = [n for n, m in fp32.named_modules() if m is table]
            shared = head if tied else None
            head_module: Any = quantized.get_submodule(str(head)) if tied else None
            own = embedding_table(blocks, embeddings[0], table) if blocks is not None and not tied else None
            replace_linears(
                quantized,
                embeddings,
                lambda n, e: scaled_like(
                    SharedEmbedding(head_module)
                    if tied
                    else BlockEmbedding(own)
                    if own
                    else QuantEmbedding.from_float(e),
                    e,
                ),
            )
            table_q: Any = quantized.get_submodule(embeddings[0])
            extra["embedding"] = {
                "module": embeddings[0],
                "shares": shared,
                "weight_sqnr_db": round(qmath.sqnr_db(table.weight, table_q.weight), 2),
                **({"source": blocks.describe(embeddings[0])} if blocks is not None else {}),
            }
        target = hardware.resolve(config.target_cpu)
        extra["target_cpu"] = target.value
        saturation: dict[str, Any] = {"layers": {}}
        if not weight_only and hardware.saturates(target):
            float_weights = {} if config.qat_steps > 0 else {n: _smoothed(fp32, n, smooth.get(n)) for n in names}
            saturation = extra["saturation"] = fix_saturation(
                quantized,
                batches,
                fix_all=config.saturation_fix is SaturationFix.ALL,
                margin=config.saturation_margin,
                float_weights=float_weights,
                symmetric=config.weight_symmetric,
                on_step=step,
            )
        measured = held or batches[: task.report_batches]
        step(f"measuring quantization error on {len(measured)} {'held-back ' if held else ''}calibration batches")
        report = error_report(fp32, quantized, names, measured, next_token=perplexity_metric)
        if perplexity_metric:
            _perplexity_gate(report, config.max_perplexity_ratio, len(measured), held=bool(held))
        for name in names:
            if gptq_stats.get(name):
                report["layers"][name]["gptq"] = gptq_stats[name]
            if not weight_only:
                lo, hi = act_ranges[name]
                report["layers"][name].update(
                    range=[round(lo, 6), round(hi, 6)], observed=[observers[name].min, observers[name].max]
                )
        state = {k: v.detach().contiguous().clone() for k, v in quantized.state_dict().items()}
        for key, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ModelError(f"{key}: NaN/Inf after quantization (a degenerate calibration range); re-calibrate")
        # One metadata key: safetensors writes a Rust HashMap, so two keys come out in a random order and the
        # same model would get different bytes (and manifest hashes) run to run. quantization.json says "int8".
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        spec = {
            "scheme": to_dict(config),
            "layers": {
                n: {
                    "op": "Linear",
                    "smooth": n in smooth,
                    "weight_bits": bits_of(n),
                    "weight_only": weight_only,
                    **_block_spec(quantized.get_submodule(n)),
                    # weight rows stored on a 7-bit grid so that the target CPU's int16 pair sums cannot saturate
                    "rows_7bit": saturation["layers"].get(n, {}).get("fixed_rows", 0),
                }
                for n in names
            },
            "embeddings": embeddings,
            "embeddings_shared_with": shared,
            "embedding_blocks": _block_spec(own) if blocks is not None and own is not None else None,
            "attention": attention_names,
            "attention_key_bits": {
                n.removesuffix(SCORES): layer["key_bits"]
                for n, layer in saturation["layers"].items()
                if n.endswith(SCORES) and layer["key_bits"] != 8
            },
            "target_cpu": target.value,
        }
        (tmp / QUANT_FILE).write_text(strict_json(spec, where=QUANT_FILE, indent=1))
        shutil.copy2(calib.path / SAMPLES_FILE, tmp / SAMPLES_FILE)
        carry_forward(source.path, tmp)
        metrics = {
            "quantized_layers": len(names),
            "fp32_linear_layers": len(linear_names(fp32)) - len(names),
            "quantized_attention_matmuls": 2 * len(attention_names),
            "method": "weight-only" if weight_only else config.method.value,
            "weight_bits": config.weight_bits if blocks is None else None,  # a source's blocks: per layer
            "weight_only": weight_only,
            "algorithm": algorithm.value if weight_only else None,
            **(_source_metrics(blocks, names) if blocks is not None else {}),
            "head_bits": bits_of(head) if head in names else None,
            "exclude": exclude,
            "task": task.kind.value,
            **report,
            **extra,
        }
        write_manifest(
            tmp,
            stage="quantize",
            parents=[source, calib],
            inputs={},
            config=to_dict(config),
            metrics=metrics,
            seed=config.seed,
            started=started,
        )
    return out_dir
