"""distill: students cut from teacher layers, initialised from them, refusing the wrong inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llmzip.artifact import read_manifest
from llmzip.errors import ModelError
from llmzip.modeling import evenly_spaced, layer_stack, load_pretrained, select_layers
from tests.conftest import invoke


def test_evenly_spaced_matches_distilbert() -> None:
    assert evenly_spaced(6, 3) == [0, 2, 4]
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ModelError):
        evenly_spaced(6, 7)


def test_select_layers_copies_the_chosen_teacher_layers(tiny_classifier: Path) -> None:
    teacher = load_pretrained(tiny_classifier)
    student = select_layers(copy.deepcopy(teacher), [1, 3])
    _, t_stack = layer_stack(teacher)
    _, s_stack = layer_stack(student)
    assert len(s_stack) == 2 and student.config.num_hidden_layers == 2
    for s_i, t_i in ((0, 1), (1, 3)):
        for (name, a), (_, b) in zip(s_stack[s_i].state_dict().items(), t_stack[t_i].state_dict().items()):
            assert torch.equal(a, b), name
    with pytest.raises(ModelError, match="do not exist"):
        select_layers(copy.deepcopy(teacher), [0, 9])


def test_student_directory(chain: dict[str, Path]) -> None:
    m = read_manifest(chain["student"])
    assert m is not None and m["stage"] == "distill"
    assert m["parents"][0]["stage"] == "finetune"
    assert m["parents"][0]["sha256"] == read_manifest_hash(chain["teacher"])
    assert m["metrics"]["student_layers"] == [0] and m["metrics"]["teacher_layers"] == 2
    assert m["metrics"]["student_params"] < m["metrics"]["teacher_params"]
    assert m["config"]["temperature"] == 2.0 and m["config"]["alpha"] == 0.5
    student = load_pretrained(chain["student"])
    assert student.config.num_hidden_layers == 1


def read_manifest_hash(path: Path) -> str:
    from llmzip.artifact import sha256_file

    return sha256_file(path / "manifest.json")


def test_explicit_layers_and_kd_flags(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = invoke(
        "distill",
        chain["teacher"],
        "-o",
        out,
        "--layers",
        "1",
        "--temperature",
        4,
        "--alpha",
        0.9,
        "--max-steps",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None and m["metrics"]["student_layers"] == [1] and m["config"]["temperature"] == 4.0


def test_refuses_calibration_dir_and_bad_layers(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("distill", chain["calib"], "-o", tmp_path / "s", "--num-layers", 1)
    assert result.exit_code == 3 and "is a calibrate artifact" in result.stderr
    result = invoke("distill", chain["teacher"], "-o", tmp_path / "s", "--layers", "0,5")
    assert result.exit_code == 5 and "do not exist" in result.stderr
    result = invoke("distill", chain["teacher"], "-o", tmp_path / "s")
    assert result.exit_code == 2 and "num_layers" in result.stderr
    assert not (tmp_path / "s").exists()


def test_tinybert_two_stage_narrow_student(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tiny-bert"
    result = invoke(
        "distill",
        chain["teacher"],
        "-o",
        out,
        "--num-layers",
        1,
        "--hidden-size",
        16,
        "--intermediate-size",
        32,
        "--num-attention-heads",
        2,
        "--hidden-mse",
        1,
        "--attention",
        1,
        "--embedding",
        1,
        "--intermediate-epochs",
        1,
        "--max-steps",
        3,
        "--cache-dir",
        tmp_path / "c",
    )
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None
    stages = m["metrics"]["stages"]
    assert set(stages["intermediate"]["losses"]) == {"hidden_mse", "attention", "embedding"}
    assert set(stages["prediction"]["losses"]) == {"kd", "ce"}
    assert m["metrics"]["student_hidden_size"] == 16 and m["metrics"]["layer_map"] == [2]
    from safetensors.torch import load_file

    keys = load_file(str(out / "model.safetensors")).keys()
    assert not any("projection" in k for k in keys)  # projections are training state, not part of the student
    student = load_pretrained(out)
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1
    assert not (tmp_path / ".tiny-bert.work").exists()


def test_teacher_cache_is_exact_and_reused(chain: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    cache = tmp_path / "cache"
    for run in ("a", "b"):
        result = invoke(
            "distill", chain["teacher"], "-o", tmp_path / run, "--num-layers", 1, "--max-steps", 2, "--cache-dir", cache
        )
        assert result.exit_code == 0, result.stderr
    first = read_manifest(tmp_path / "a")["metrics"]["stages"]["prediction"]["teacher_cache"]  # type: ignore[index]
    second = read_manifest(tmp_path / "b")["metrics"]["stages"]["prediction"]["teacher_cache"]  # type: ignore[index]
    assert first["hit"] is False and second["hit"] is True and first["key"] == second["key"]
    cached = np.load(Path(first["path"]) / "logits.npy")
    # the cache holds what the teacher really outputs, row for row (fp16)
    from llmzip.config import DataConfig
    from llmzip.data import load_split

    teacher = load_pretrained(chain["teacher"])
    tokenizer = load_tokenizer_for(chain["teacher"])
    ds, _ = load_split(DataConfig(), "train", seed=0, shuffle=True)  # type: ignore[misc]
    enc = tokenizer(ds["sentence"][:5], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        want = teacher(**enc).logits.numpy()
    assert np.allclose(cached[:5], want, atol=2e-3)
    other = invoke(
        "distill",
        chain["teacher"],
        "-o",
        tmp_path / "c",
        "--num-layers",
        1,
        "--max-steps",
        1,
        "--cache-dir",
        cache,
        "--max-train-samples",
        100,
    )
    assert other.exit_code == 0
    third = read_manifest(tmp_path / "c")["metrics"]["stages"]["prediction"]["teacher_cache"]  # type: ignore[index]
    assert third["hit"] is False and third["key"] != first["key"]  # other data, other key


def load_tokenizer_for(path: Path):  # type: ignore[no-untyped-def]
    from llmzip.modeling import load_tokenizer

    return load_tokenizer(path)


def test_resume_after_interrupt(chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmzip.config import DistillConfig
    from llmzip.progress import trainer_callback
    from llmzip.stages import distill as stage

    out = tmp_path / "student"

    def killing_callback(description: str):  # type: ignore[no-untyped-def]
        callback = trainer_callback(description)
        original = callback.on_step_end

        def on_step_end(args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            original(args, state, control, **kwargs)
            if state.global_step == 3:
                raise KeyboardInterrupt

        callback.on_step_end = on_step_end
        return callback

    config = DistillConfig(num_layers=1, max_steps=4, save_steps=2, batch_size=16, teacher_cache=False)
    monkeypatch.setattr(stage, "trainer_callback", killing_callback)
    with pytest.raises(KeyboardInterrupt):
        stage.distill(str(chain["teacher"]), out, config=config)
    assert not out.exists()
    assert (tmp_path / ".student.work" / "prediction" / "checkpoint-2").is_dir()
    monkeypatch.undo()
    stage.distill(str(chain["teacher"]), out, config=config, resume=True)
    m = read_manifest(out)
    assert m is not None and m["metrics"]["steps"] == 4
    assert not (tmp_path / ".student.work").exists()


def test_torchrun_two_processes(chain: dict[str, Path], tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys
    import warnings

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port: no clash with anything else on the machine
        "--nproc_per_node=2",
        "-m",
        "llmzip",
        "distill",
        str(chain["teacher"]),
        "-o",
        str(out),
        "--num-layers",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        # One retry, loudly: a launch on a loaded 2-core CI box has failed once in ~20 runs after the checkpoint
        # race was fixed, cause not yet found; a second failure is a real one.
        first = "\n".join(line for line in done.stderr.splitlines() if "Error" in line)[-1500:]
        warnings.warn(f"torchrun attempt 1 failed, retrying once: {first}", RuntimeWarning, stacklevel=1)
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    errors = "\n".join(line for line in done.stderr.splitlines() if "rank" in line and "Error" in line)
    assert done.returncode == 0, errors[-3000:]
    m = read_manifest(out)
    assert m is not None and m["metrics"]["steps"] == 10  # 320 rows / (16 per rank × 2 ranks)
    assert load_pretrained(out).config.num_hidden_layers == 1


def test_layer_distillation_reads_the_teacher_states_from_the_cache(chain: dict[str, Path], tmp_path: Path) -> None:
    """With hidden-state losses the teacher runs once (states of the matched layers cached, reused by the next run)
    instead of every step; --no-teacher-cache keeps it online."""
    common = ("distill", chain["teacher"], "--num-layers", 1, "--max-steps", 2, "--hidden-mse", 1, "--hidden-cos", 1)
    cache = tmp_path / "cache"
    for run, extra in (("online", ["--no-teacher-cache"]), ("a", []), ("b", [])):
        result = invoke(*common, "-o", tmp_path / run, "--cache-dir", cache, *extra)
        assert result.exit_code == 0, result.stderr
    stage = {r: read_manifest(tmp_path / r)["metrics"]["stages"]["prediction"] for r in ("online", "a", "b")}  # type: ignore[index]
    assert stage["online"]["teacher_logits"] == "online" and stage["a"]["teacher_logits"] == "cached"
    assert stage["a"]["teacher_states"]["hit"] is False and stage["b"]["teacher_states"]["hit"] is True
    assert stage["a"]["teacher_states"]["layers"] == [2]  # 1 student layer ↔ the teacher's last (of 2)


def test_cached_states_are_the_teacher_states_at_real_tokens(tiny_classifier: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from llmzip.modeling import load_tokenizer
    from llmzip.shrink.teacher_cache import teacher_states

    teacher, tokenizer = load_pretrained(tiny_classifier), load_tokenizer(tiny_classifier)
    texts = ["a good film", "bad", "the best and the worst movie of the year", "fine"]
    encoded = Dataset.from_dict(dict(tokenizer(texts, truncation=True)))
    collator = DataCollatorWithPadding(tokenizer)
    states, info = teacher_states(teacher, "t", encoded, collator, [0, 2], root=tmp_path, max_bytes=10**9)
    assert states is not None and info["hit"] is False
    ids = [2, 0, 3]
    padded = collator([encoded[i] for i in ids])
    with torch.no_grad():
        want = teacher(**padded, output_hidden_states=True).hidden_states
    got = states.batch(torch.tensor(ids), padded["input_ids"].shape[1])
    mask = padded["attention_mask"].bool()
    for t in (0, 2):
        assert torch.allclose(got[t][mask], want[t][mask], atol=2e-2, rtol=1e-2)  # fp16 on disk
        assert got[t][~mask].abs().sum() == 0  # padding stays zero (the losses mask it anyway)
    again, info = teacher_states(teacher, "t", encoded, collator, [0, 2], root=tmp_path, max_bytes=10**9)
    assert info["hit"] is True and again is not None
    bounded, info = teacher_states(teacher, "t", encoded, collator, [0, 2], root=tmp_path / "b", max_bytes=10)
    assert bounded is None and "teacher online" in info["why"] and not (tmp_path / "b" / "teacher-states").exists()


def test_pruning_in_rounds_reaches_the_target_width_with_training_between(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    teacher = load_pretrained(chain["teacher"])
    heads, ffn = teacher.config.num_attention_heads, teacher.config.intermediate_size
    out = tmp_path / "rounds"
    args = ("distill", chain["teacher"], "-o", out, "--num-layers", 1, "--max-steps", 5, "--prune-rounds", 2)
    result = invoke(*args, "--keep-heads", 1, "--keep-ffn", ffn // 4)
    assert result.exit_code == 0, result.stderr
    metrics = read_manifest(out)["metrics"]  # type: ignore[index]
    rounds = metrics["init"]["prune_rounds"]
    assert [r["heads"] for r in rounds] == [round((heads + 1) / 2), 1]  # halfway, then the target
    assert [r["ffn"] for r in rounds] == [round((ffn + ffn // 4) / 2), ffn // 4]
    assert [r["steps"] for r in rounds] == [2, 3]
    assert set(metrics["stages"]) == {"prune-round-1", "prediction"}
    assert metrics["stages"]["prune-round-1"]["steps"] == 2 and metrics["stages"]["prediction"]["steps"] == 3
    assert metrics["init"]["structure"]["pruning"]["heads_per_layer"] == 1
    student = load_pretrained(out)  # the final, smaller shapes load back
    assert student.bert.encoder.layer[0].intermediate.dense.out_features == ffn // 4
    again = invoke(*args, "--keep-heads", 1, "--resume")
    assert again.exit_code != 0 and "prune_rounds" in again.stderr
    no_target = invoke("distill", chain["teacher"], "-o", tmp_path / "x", "--prune-rounds", 2, "--max-steps", 4)
    assert no_target.exit_code != 0 and "keep_heads" in no_target.stderr
