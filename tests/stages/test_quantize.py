"""quantize: int8 weights and activation qparams exactly as the formulas say, error report in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmzip.artifact import open_artifact, read_manifest
from llmzip.modeling import load_model, load_pretrained
from llmzip.quant.calibration import STATS_FILE
from llmzip.quant.modules import QuantLinear
from tests.conftest import invoke, refresh_manifest

LAYER = "bert.encoder.layer.0.intermediate.dense"


def test_weights_and_scales_match_hand_formulas(chain: dict[str, Path]) -> None:
    fp32 = load_pretrained(chain["student"])
    state = load_file(str(chain["int8"] / "model.safetensors"))
    w = fp32.get_submodule(LAYER).weight.detach()
    scale = state[f"{LAYER}.weight_scale"]
    # symmetric per-channel: absmax / 127, or absmax / 63 on the rows the portable target gave 7 bits
    narrow = torch.isclose(scale, w.abs().amax(dim=1) / 63)
    assert torch.allclose(scale[~narrow], w.abs().amax(dim=1)[~narrow] / 127)
    spec = json.loads((chain["int8"] / "quantization.json").read_text())
    assert int(narrow.sum()) == spec["layers"][LAYER]["rows_7bit"] < w.shape[0]
    q = state[f"{LAYER}.weight_q"]
    assert q.dtype == torch.int8 and q.shape == (w.shape[1], w.shape[0])  # stored [in, out] for ONNX MatMul
    limit = torch.where(narrow, 63, 127)[:, None]
    assert torch.equal(q.t(), torch.clamp(torch.round(w / scale[:, None]), -limit, limit).to(torch.int8))

    stats = json.loads((chain["calib"] / STATS_FILE).read_text())["tensors"][LAYER]["input"]
    lo, hi = min(stats["min"], 0.0), max(stats["max"], 0.0)
    expected_scale = (hi - lo) / 255  # S = (max - min) / (2^8 - 1)
    assert abs(float(state[f"{LAYER}.input_scale"]) - expected_scale) < 1e-6 * max(1.0, expected_scale)
    assert int(state[f"{LAYER}.input_zero_point"]) == round(-lo / expected_scale)
    assert state[f"{LAYER}.input_zero_point"].dtype == torch.uint8


def test_manifest_reports_per_layer_error(chain: dict[str, Path]) -> None:
    m = read_manifest(chain["int8"])
    assert m is not None and m["stage"] == "quantize"
    assert [p["stage"] for p in m["parents"]] == ["distill", "calibrate"]
    metrics = m["metrics"]
    assert metrics["quantized_layers"] == 6 and metrics["fp32_linear_layers"] == 2  # pooler + classifier kept
    layer = metrics["layers"][LAYER]
    assert layer["weight_sqnr_db"] > 30 and layer["output_sqnr_db"] > 10
    assert metrics["logits_sqnr_db"] > 10 and 0.5 <= metrics["argmax_agreement"] <= 1.0


def test_quantized_checkpoint_reloads(chain: dict[str, Path]) -> None:
    model = load_model(open_artifact(chain["int8"], verb="test", accepts=("quantize",)))
    assert isinstance(model.get_submodule(LAYER), QuantLinear)
    assert isinstance(model.get_submodule("classifier"), torch.nn.Linear)


def test_per_tensor_asymmetric_variant(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = invoke(
        "quantize",
        chain["student"],
        chain["calib"],
        "-o",
        out,
        "--weight-granularity",
        "per-tensor",
        "--weight-asymmetric",
        "--exclude",
        "classifier",
        "--target-cpu",
        "vnni",  # the full 8-bit grid: the formula below (the portable target may narrow a per-tensor grid)
    )
    assert result.exit_code == 0, result.stderr
    state = load_file(str(out / "model.safetensors"))
    assert state[f"{LAYER}.weight_scale"].numel() == 1
    assert state["bert.pooler.dense.weight_q"].dtype == torch.int8  # only the classifier excluded now
    w = load_pretrained(chain["student"]).get_submodule(LAYER).weight.detach()
    assert abs(float(state[f"{LAYER}.weight_scale"]) - float(w.max() - w.min()) / 255) < 1e-7


def test_refuses_mismatched_or_wrong_inputs(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("quantize", chain["teacher"], chain["calib"], "-o", tmp_path / "q")
    assert result.exit_code == 3 and "was recorded on" in result.stderr and "llmzip calibrate" in result.stderr
    result = invoke("quantize", chain["student"], chain["teacher"], "-o", tmp_path / "q")
    assert result.exit_code == 3 and "is a finetune artifact" in result.stderr
    result = invoke("quantize", chain["student"], chain["calib"], "-o", tmp_path / "q", "--exclude", "(")
    assert result.exit_code == 2 and "regular expression" in result.stderr
    assert not (tmp_path / "q").exists()


def test_range_methods_from_saved_histograms(chain: dict[str, Path], tmp_path: Path) -> None:
    scales = {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        out = tmp_path / method
        extra = ["--percentile", "99.0"] if method == "percentile" else []
        result = invoke("quantize", chain["student"], chain["calib"], "-o", out, "--method", method, *extra)
        assert result.exit_code == 0, result.stderr
        m = read_manifest(out)
        assert m is not None and m["metrics"]["method"] == method
        layer = m["metrics"]["layers"][LAYER]
        lo, hi = layer["range"]
        assert layer["observed"][0] - 1e-6 <= lo <= hi <= layer["observed"][1] + 1e-6
        scales[method] = layer["input_scale"]
    assert scales["percentile"] < scales["minmax"]  # 1% clipped on each side: a strictly narrower range
    for method in ("entropy", "mse"):
        assert scales[method] <= scales["minmax"] * (1 + 1e-6)


def test_sensitivity_and_fallback(chain: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import DEMO_VALIDATION

    out = tmp_path / "safe"
    result = invoke(
        "quantize",
        chain["student"],
        chain["calib"],
        "-o",
        out,
        "--sensitivity",
        "--max-accuracy-drop",
        0.0,
        "--data",
        DEMO_VALIDATION,
    )
    assert result.exit_code == 0, result.stderr
    sens = json.loads((out / "sensitivity.json").read_text())
    assert len(sens["layers"]) == 6 and all("accuracy_drop_pt" in r and "logits_sqnr_db" in r for r in sens["layers"])
    fb = json.loads((out / "fallback.json").read_text())
    tried = fb["tried"]
    assert [t["int8_layers"] for t in tried] == list(range(6, 6 - len(tried), -1))  # one more fp32 layer each
    assert tried[-1]["meets_target"] or len(tried) == 7
    assert all(t["latency_ms"] > 0 for t in tried) and any(t["pareto"] for t in tried)  # each one exported and timed
    m = read_manifest(out)
    assert m is not None
    assert m["metrics"]["quantized_layers"] == 6 - len(fb["chosen_fp32_layers"])
    assert m["metrics"]["fallback"]["fp32_layers"] == fb["chosen_fp32_layers"]
    assert m["metrics"]["eval_samples"] == 80


def test_smoothquant_keeps_the_product_and_exports(chain: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "sq"
    assert invoke("quantize", chain["student"], chain["calib"], "-o", out, "--smoothquant", 0.5).exit_code == 0
    model = load_model(open_artifact(out, verb="test", accepts=("quantize",)))
    layer = model.get_submodule(LAYER)
    assert isinstance(layer, QuantLinear) and layer.input_smooth is not None
    fp32 = load_pretrained(chain["student"]).get_submodule(LAYER).weight.detach()
    # dequantized weight on the original input ≈ the fp32 weight: smoothing moved scale, not meaning
    assert float((layer.dequantized_weight() - fp32).abs().max()) < 0.05 * float(fp32.abs().max())
    m = read_manifest(out)
    assert m is not None and m["config"]["smoothquant"] == 0.5
    onnx_dir = tmp_path / "sq-onnx"
    result = invoke("export", out, "-o", onnx_dir)
    assert result.exit_code == 0, result.stderr
    em = read_manifest(onnx_dir)
    assert em is not None and em["metrics"]["int8_kernels"] >= 6 and "Mul" in em["metrics"]["graph_ops"]
    assert np.isfinite(em["metrics"]["parity"]["max_abs_diff"])


def test_quantization_aware_training(chain: dict[str, Path], tmp_path: Path) -> None:
    from llmzip.quant.qat import QATLinear

    out = tmp_path / "qat"
    result = invoke(
        "quantize",
        chain["student"],
        chain["calib"],
        "-o",
        out,
        "--qat-steps",
        4,
        "--qat-learning-rate",
        1e-3,
        "--smoothquant",
        0.5,
    )
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None and m["metrics"]["qat"]["steps"] == 4 and set(m["metrics"]["qat"]["losses"]) == {"kd", "ce"}
    model = load_model(open_artifact(out, verb="test", accepts=("quantize",)))
    layer = model.get_submodule(LAYER)
    assert isinstance(layer, QuantLinear) and not isinstance(layer, QATLinear)
    ptq = load_file(str(chain["int8"] / "model.safetensors"))
    qat = load_file(str(out / "model.safetensors"))
    assert not torch.equal(ptq[f"{LAYER}.weight_q"], qat[f"{LAYER}.weight_q"])  # training moved the weights
    assert not (tmp_path / ".qat.work").exists()
    onnx_dir = tmp_path / "qat-onnx"
    assert invoke("export", out, "-o", onnx_dir).exit_code == 0  # parity and int8 kernels checked by export


def test_dynamic_activations_run_as_dynamic_int8_kernels(chain: dict[str, Path], tmp_path: Path) -> None:
    from llmzip.onnx.export import optimized_op_counts

    out, onnx_dir = tmp_path / "dyn", tmp_path / "dyn-onnx"
    assert invoke("quantize", chain["student"], chain["calib"], "-o", out, "--activations", "dynamic").exit_code == 0
    model = load_model(open_artifact(out, verb="test", accepts=("quantize",)))
    assert model.get_submodule(LAYER).dynamic  # type: ignore[union-attr]
    result = invoke("export", out, "-o", onnx_dir)
    assert result.exit_code == 0, result.stderr
    counts = optimized_op_counts(onnx_dir / "model.onnx")
    # Q, K and V share one DynamicQuantizeLinear feeding three MatMulIntegerToFloat; the rest fuse whole.
    assert (
        counts["DynamicQuantizeMatMul"] + counts["MatMulIntegerToFloat"] >= 6 and counts["DynamicQuantizeMatMul"] >= 1
    )
    assert "QuantizeLinear" not in counts  # nothing static left
    m = read_manifest(onnx_dir)
    assert m is not None and m["metrics"]["parity"]["max_abs_diff"] < 1e-3  # no rounding ties to disagree on
    bad = invoke(
        "quantize",
        chain["student"],
        chain["calib"],
        "-o",
        tmp_path / "x",
        "--activations",
        "dynamic",
        "--activation-symmetric",
    )
    assert bad.exit_code == 2 and "uint8" in bad.stderr


def test_int8_embeddings_are_the_default_shrink_the_model_and_keep_parity(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    from llmzip.quant.modules import QuantEmbedding

    model = load_model(open_artifact(chain["int8"], verb="test", accepts=("quantize",)))  # quantized with no flag
    table = model.get_input_embeddings()
    assert isinstance(table, QuantEmbedding) and table.weight_q.dtype == torch.int8
    fp32 = load_pretrained(chain["student"]).get_input_embeddings().weight.detach()
    assert torch.allclose(table.weight, fp32, atol=float(fp32.abs().max()) / 127)  # within one step per row
    out, onnx_dir = tmp_path / "emb32", tmp_path / "emb32-onnx"
    assert invoke("quantize", chain["student"], chain["calib"], "-o", out, "--fp32-embeddings").exit_code == 0
    kept = load_model(open_artifact(out, verb="test", accepts=("quantize",))).get_input_embeddings()
    assert isinstance(kept, torch.nn.Embedding)
    assert invoke("export", out, "-o", onnx_dir).exit_code == 0
    m, fp32_table = read_manifest(chain["onnx_int8"]), read_manifest(onnx_dir)
    assert m is not None and fp32_table is not None
    assert m["metrics"]["size_mb"] < 0.7 * fp32_table["metrics"]["size_mb"]
    assert m["metrics"]["parity"]["max_abs_diff"] < 1e-3


def test_int4_weight_only_runs_as_matmulnbits(chain: dict[str, Path], tmp_path: Path) -> None:
    from llmzip.onnx.export import optimized_op_counts
    from llmzip.quant.weight_only import WeightOnlyLinear

    out, onnx_dir = tmp_path / "w4", tmp_path / "w4-onnx"
    result = invoke("quantize", chain["student"], chain["calib"], "-o", out, "--weight-bits", 4, "--weight-asymmetric")
    assert result.exit_code == 0, result.stderr
    model = load_model(open_artifact(out, verb="test", accepts=("quantize",)))
    layer = model.get_submodule(LAYER)
    assert isinstance(layer, WeightOnlyLinear) and layer.weight_packed.dtype == torch.uint8
    assert invoke("export", out, "-o", onnx_dir).exit_code == 0
    m = read_manifest(onnx_dir)
    assert m is not None and m["metrics"]["precision"] == "int4-weight-only"
    counts = optimized_op_counts(onnx_dir / "model.onnx")
    assert counts["MatMulNBits"] == m["metrics"]["quantized_layers"] and "QuantizeLinear" not in counts
    assert m["metrics"]["parity"]["max_abs_diff"] < 1e-4  # float activations: no rounding ties to disagree on
    assert m["metrics"]["size_mb"] < read_manifest(chain["onnx_int8"])["metrics"]["size_mb"]  # type: ignore[index]
    bad = invoke("quantize", chain["student"], chain["calib"], "-o", tmp_path / "x", "--weight-bits", 3)
    assert bad.exit_code == 2 and "weight_bits" in bad.stderr and not (tmp_path / "x").exists()


def test_attention_matmuls_run_as_integer_kernels(chain: dict[str, Path], tmp_path: Path) -> None:
    from llmzip.onnx.export import optimized_op_counts
    from llmzip.quant.attention import ATTR, AttentionQuant, attention_module_names

    out, onnx_dir = tmp_path / "att", tmp_path / "att-onnx"
    result = invoke("quantize", chain["student"], chain["calib"], "-o", out, "--attention", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    fp32 = load_pretrained(chain["student"])
    names = attention_module_names(fp32)
    assert names and metrics["quantized_attention_matmuls"] == 2 * len(names)
    model = load_model(open_artifact(out, verb="test", accepts=("quantize",)))
    quant = getattr(model.get_submodule(names[0]), ATTR)
    stats = json.loads((chain["calib"] / STATS_FILE).read_text())["tensors"][f"{names[0]}:key"]["input"]
    absmax = max(abs(stats["min"]), abs(stats["max"]))
    assert isinstance(quant, AttentionQuant) and abs(float(quant.key_scale) - absmax / quant.key_qmax) < 1e-7
    assert invoke("export", out, "-o", onnx_dir).exit_code == 0
    counts = optimized_op_counts(onnx_dir / "model.onnx")
    linear_only = optimized_op_counts(chain["onnx_int8"] / "model.onnx")
    integer = ("MatMulIntegerToFloat", "QLinearMatMul")
    assert sum(counts[k] for k in integer) == sum(linear_only[k] for k in integer) + 2 * len(names)


def test_saturation_fix_all_gives_7_bits_to_every_row_and_key_and_exports_a_clip(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    from llmzip.onnx.export import optimized_op_counts
    from llmzip.quant.attention import attention_module_names

    out, onnx_dir = tmp_path / "all7", tmp_path / "all7-onnx"
    args = ("quantize", chain["student"], chain["calib"], "-o", out, "--attention", "--saturation-fix", "all")
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    saturation = json.loads(result.stdout)["metrics"]["saturation"]
    assert saturation["fixed_rows"] == saturation["total_rows"] and saturation["saturated_pairs_after"] == 0
    state = load_file(str(out / "model.safetensors"))
    assert all(int(v.abs().max()) <= 63 for k, v in state.items() if k.endswith("weight_q") and "embeddings" not in k)
    names = attention_module_names(load_pretrained(chain["student"]))
    spec = json.loads((out / "quantization.json").read_text())
    assert spec["attention_key_bits"] == {n: 7 for n in names}
    assert invoke("export", out, "-o", onnx_dir).exit_code == 0  # parity with PyTorch's 7-bit key included
    assert optimized_op_counts(onnx_dir / "model.onnx")["Clip"] == len(names)  # keys clipped to ±63 steps


def test_exclude_by_type_keeps_those_classes_fp32(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "no-ffn2"
    result = invoke("quantize", chain["student"], chain["calib"], "-o", out, "--exclude", "type:BertOutput", "--json")
    assert result.exit_code == 0, result.stderr
    layers = set(json.loads(result.stdout)["metrics"]["layers"])
    assert LAYER in layers  # BertIntermediate's dense stays quantized
    assert not any(n.endswith("layer.0.output.dense") for n in layers)
    assert any(n.endswith("classifier") for n in layers)  # the default head exclusion was replaced


def test_attention_needs_a_calibration_that_recorded_it(chain: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old-calib"
    shutil.copytree(chain["calib"], old)
    stats = json.loads((old / STATS_FILE).read_text())
    stats["tensors"] = {k: v for k, v in stats["tensors"].items() if ":" not in k}  # as calibrated before --attention
    (old / STATS_FILE).write_text(json.dumps(stats))
    refresh_manifest(old)
    result = invoke("quantize", chain["student"], old, "-o", tmp_path / "q", "--attention")
    assert result.exit_code == 3 and "re-run `llmzip calibrate`" in result.stderr
    assert not (tmp_path / "q").exists()
    assert invoke("quantize", chain["student"], old, "-o", tmp_path / "q").exit_code == 0  # Linear-only still works
