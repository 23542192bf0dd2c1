"""Causal-LM finetune and distill (llmzip/tasks/lm_training.py) on a tiny Llama: token-level losses against
hand-computed values, token windows, perplexity in the manifest, layer-cut students that load back, one-line errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from llmzip.artifact import read_manifest
from llmzip.config import DataConfig, DistillConfig, TrainConfig
from llmzip.modeling import layer_stack, load_pretrained, load_tokenizer
from llmzip.shrink.students import build, cut_layers, plan
from llmzip.tasks import TaskKind, task_of
from llmzip.tasks.lm_training import IGNORE, next_token_ce, prepare, token_kl
from llmzip.testing import build_tiny_llama, demo_text
from tests.conftest import invoke

WINDOW = ("--max-length", 16)
FAST = ("--max-steps", 3, "--batch-size", 4, "--max-eval-samples", 8)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of raw-text splits, named like WikiText's after its folder layout: train.raw, valid.raw."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = demo_text().splitlines()
    (folder / "train.raw").write_text("\n".join(lines[:300]) + "\n")
    (folder / "valid.raw").write_text("\n".join(lines[300:]) + "\n")
    return folder


@pytest.fixture(scope="module")
def distilled(tiny_llama: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "student"
    args = ("--num-layers", 1, "--alpha", 0.5, "--temperature", 2, "--hidden-cos", 1)
    result = invoke("distill", tiny_llama, "-o", out, "--data", corpus, "--eval-split", "valid", *WINDOW, *FAST, *args)
    assert result.exit_code == 0, result.stderr
    return out


def test_token_kl_matches_hand_computed_values() -> None:
    student = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, -5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [-5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is padding: however wrong, it is not scored
    # Position 0 agrees (KL 0); position 1 at T=1: p_T = (½, ½), p_S = softmax(1, 0).
    p_s = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = (0.5 * math.log(0.5 / p_s[0]) + 0.5 * math.log(0.5 / p_s[1])) / 2  # mean over the 2 real tokens
    assert token_kl(student, teacher, mask, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # T² scaling: at T=2 the logits halve and the result is multiplied by 4.
    p_s2 = torch.softmax(torch.tensor([0.5, 0.0]), 0)
    expected_t2 = 4 * (0.5 * math.log(0.5 / p_s2[0]) + 0.5 * math.log(0.5 / p_s2[1])) / 2
    assert token_kl(student, teacher, mask, 2.0).item() == pytest.approx(expected_t2, rel=1e-5)
    assert token_kl(teacher, teacher, torch.ones(1, 3), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_token_kl_on_a_full_top_k_equals_the_dense_kl() -> None:
    from llmzip.shrink.teacher_cache import TopK

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.ones(2, 5)
    top = teacher.topk(7, dim=-1)
    dense = token_kl(student, teacher, mask, 2.0)
    assert token_kl(student, TopK(top.values, top.indices), mask, 2.0).item() == pytest.approx(dense.item(), rel=1e-5)
    top3 = teacher.topk(3, dim=-1)  # a truncated teacher is renormalised over its k tokens: a different, finite loss
    assert torch.isfinite(token_kl(student, TopK(top3.values, top3.indices), mask, 2.0))


def test_influence_keeps_the_layers_that_turn_the_stream_and_top_k_is_cached_once(
    tiny_llama: Path, corpus: Path, tmp_path: Path
) -> None:
    args = ("--num-layers", 2, "--layer-selection", "influence", "--teacher-top-k", 8, "--alpha", 1.0)
    for name in ("a", "b"):
        result = invoke("distill", tiny_llama, "-o", tmp_path / name, "--data", corpus, *WINDOW, *FAST, *args)
        assert result.exit_code == 0, result.stderr
    first, second = (read_manifest(tmp_path / n)["metrics"] for n in ("a", "b"))  # type: ignore[index]
    influence = first["init"]["block_influence"]
    kept = sorted(sorted(range(len(influence)), key=lambda i: -influence[i])[:2])
    student = load_pretrained(tmp_path / "a")
    assert student.config.llmzip_teacher_layers == kept and student.config.num_hidden_layers == 2
    caches = [m["stages"]["prediction"]["teacher_cache"] for m in (first, second)]
    assert caches[0]["top_k"] == 8 and not caches[0]["hit"] and caches[1]["hit"]
    assert caches[0]["key"] == caches[1]["key"]


def test_next_token_ce_scores_position_i_against_token_i_plus_1() -> None:
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[1, 2, 3, 4], [5, 6, IGNORE, IGNORE]])
    by_hand = [F.cross_entropy(logits[b, i], labels[b, i + 1]) for b, i in ((0, 0), (0, 1), (0, 2), (1, 0))]
    assert next_token_ce(logits, labels).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)


def test_windows_subset_and_eval_head(tiny_llama: Path, corpus: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    data = DataConfig(dataset=str(corpus), eval_split="valid", max_length=16, max_eval_samples=3)
    full = prepare(TrainConfig(data=data), tokenizer)
    assert full.eval is not None and len(full.eval) == 3
    assert all(len(r) == 16 for r in full.train["input_ids"]) and full.train["labels"] == full.train["input_ids"]
    assert full.inputs["train"]["windows"] == full.inputs["train"]["windows_available"] == len(full.train)
    data.max_train_samples = 5
    subset = prepare(TrainConfig(data=data, seed=1), tokenizer)
    assert len(subset.train) == 5 and all(r in full.train["input_ids"] for r in subset.train["input_ids"])
    data.dataset = str(corpus / "train.raw")  # one file is training data only: no pretend held-out eval
    assert prepare(TrainConfig(data=data), tokenizer).eval is None


def test_finetune_writes_perplexity(tiny_llama: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    result = invoke("finetune", tiny_llama, "-o", out, "--data", corpus, "--eval-split", "valid", *WINDOW, *FAST)
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None and m["stage"] == "finetune" and m["task"] == "causal-lm"
    metrics = m["metrics"]
    assert metrics["steps"] == 3 and metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert 1 < metrics["eval_perplexity"] < 10 * len(load_tokenizer(tiny_llama))  # a near-uniform random model
    assert m["inputs"]["eval"]["windows"] == 8 and m["inputs"]["train"]["window_tokens"] == 16
    model = load_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and task_of(model.config).kind is TaskKind.CAUSAL_LM


def test_distill_cuts_a_one_layer_student_that_loads_back(distilled: Path, tiny_llama: Path) -> None:
    m = read_manifest(distilled)
    assert m is not None and m["task"] == "causal-lm"
    metrics = m["metrics"]
    assert metrics["student_layers"] == [0] and metrics["teacher_layers"] == 4 and metrics["layer_map"] == [4]
    assert metrics["losses"] == ["ce", "hidden_cos", "kd"]
    prediction = metrics["stages"]["prediction"]
    assert prediction["teacher_logits"] == "online" and prediction["teacher_cache"] is None
    assert math.isfinite(prediction["final_train_loss"]) and math.isfinite(metrics["eval_perplexity"])
    assert math.isfinite(metrics["teacher_eval_perplexity"])
    student = load_pretrained(distilled)
    assert student.config.num_hidden_layers == 1 and len(student.model.layers) == 1
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    teacher = load_pretrained(tiny_llama)
    assert student.model.embed_tokens.weight.shape == teacher.model.embed_tokens.weight.shape


def test_alpha_zero_trains_on_text_alone(tiny_llama: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ce"
    args = ("--num-layers", 2, "--alpha", 0)
    result = invoke("distill", tiny_llama, "-o", out, "--data", corpus, "--eval-split", "valid", *WINDOW, *FAST, *args)
    assert result.exit_code == 0, result.stderr
    metrics = read_manifest(out)["metrics"]  # type: ignore[index]
    assert metrics["losses"] == ["ce"] and metrics["stages"]["prediction"]["teacher_logits"] == "unused"
    assert metrics["student_layers"] == [0, 2] and math.isfinite(metrics["eval_perplexity"])


def test_resume_from_a_checkpoint_of_a_tied_student(
    tiny_llama: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints save the tied head once (safetensors refuses shared tensors); --resume brings it back tied."""
    from llmzip.stages import distill as stage

    out = tmp_path / "student"
    make_callback = stage.trainer_callback

    def killing_callback(description: str) -> Any:
        callback = make_callback(description)
        original = callback.on_step_end

        def on_step_end(args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            original(args, state, control, **kwargs)
            if state.global_step == 3:
                raise KeyboardInterrupt

        callback.on_step_end = on_step_end
        return callback

    data = DataConfig(dataset=str(corpus), eval_split="valid", max_length=16, max_eval_samples=4)
    config = DistillConfig(data=data, num_layers=1, max_steps=4, save_steps=2, batch_size=4)
    monkeypatch.setattr(stage, "trainer_callback", killing_callback)
    with pytest.raises(KeyboardInterrupt):
        stage.distill(str(tiny_llama), out, config=config)
    assert (tmp_path / ".student.work" / "prediction" / "checkpoint-2").is_dir() and not out.exists()
    monkeypatch.undo()
    stage.distill(str(tiny_llama), out, config=config, resume=True)
    assert read_manifest(out)["metrics"]["steps"] == 4  # type: ignore[index]
    student = load_pretrained(out)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


def test_cut_layers_keeps_per_layer_config_in_step(tiny_llama: Path) -> None:
    teacher = load_pretrained(tiny_llama)
    teacher.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    student = cut_layers(copy.deepcopy(teacher), [1, 2])
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    assert [m.self_attn.layer_idx for m in layer_stack(student)[1]] == [0, 1]  # type: ignore[union-attr]
    config = DistillConfig(num_layers=2)
    built, info = build(config, teacher, plan(config, teacher))
    assert built.config.num_hidden_layers == 2 and info["init"] == "teacher layers"


def test_text_shorter_than_one_window_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("a few words only\n")
    out = tmp_path / "ft"
    result = invoke("finetune", tiny_llama, "-o", out, "--data", short, *WINDOW)
    assert result.exit_code == 4 and "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "fewer than 16 tokens" in errors[0] and "--max-length" in errors[0]
    assert not out.exists()


def test_narrower_lm_student_is_refused_in_one_line(tiny_llama: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "narrow"
    result = invoke("distill", tiny_llama, "-o", out, "--data", corpus, "--num-layers", 1, "--hidden-size", 16)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "hidden_size" in errors[0] and not out.exists()


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (progress lines such as "· loading …" may precede the one error)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), stderr
    return [line for line in lines if line.startswith("error:")]
