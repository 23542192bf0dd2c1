"""calibrate: ranges for every Linear input, padding excluded, samples kept."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmzip.artifact import read_manifest
from llmzip.modeling import load_pretrained, load_tokenizer
from llmzip.quant.attention import attention_module_names
from llmzip.quant.calibration import SAMPLES_FILE, STATS_FILE, linear_names, record
from llmzip.tasks import task_of
from tests.conftest import invoke


def test_stats_cover_every_linear(chain: dict[str, Path]) -> None:
    stats = json.loads((chain["calib"] / STATS_FILE).read_text())
    model = load_pretrained(chain["student"])
    attention = {f"{a}:{t}" for a in attention_module_names(model) for t in ("query", "key", "value")}
    assert attention and set(stats["tensors"]) == set(linear_names(model)) | attention
    for entry in stats["tensors"].values():
        assert entry["input"]["min"] <= entry["input"]["max"] and entry["input"]["count"] > 0
    rows = (chain["calib"] / SAMPLES_FILE).read_text().splitlines()
    assert len(rows) == 48 == stats["num_samples"]
    m = read_manifest(chain["calib"])
    assert m is not None and m["parents"][0]["stage"] == "distill" and m["metrics"]["num_samples"] == 48
    assert (chain["calib"] / "tokenizer.json").exists() and (chain["calib"] / "config.json").exists()


def test_padding_positions_are_not_observed(chain: dict[str, Path]) -> None:
    model = load_pretrained(chain["student"])
    tokenizer = load_tokenizer(chain["student"])
    rows = [
        {"text": "a wonderful film", "text_pair": None},
        {"text": "the plot drags on and on and on", "text_pair": None},
    ]
    names = ["bert.encoder.layer.0.attention.self.query"]
    together = record(model, task_of(model.config).batches(tokenizer, rows, max_length=32, batch_size=2), names)[
        names[0]
    ]
    apart = record(model, task_of(model.config).batches(tokenizer, rows, max_length=32, batch_size=1), names)[names[0]]
    assert together.count == apart.count  # same real tokens whatever the padding
    assert abs(together.min - apart.min) < 1e-5 and abs(together.max - apart.max) < 1e-5
    assert torch.isfinite(torch.tensor([together.min, together.max])).all()


def test_refuses_quantized_dir(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("calibrate", chain["int8"], "-o", tmp_path / "c")
    assert result.exit_code == 3 and "is a quantize artifact" in result.stderr and "llmzip export" in result.stderr


def test_histograms_are_saved_and_reload(chain: dict[str, Path]) -> None:
    from llmzip.quant.calibration import HISTOGRAMS_FILE, read_observers

    assert (chain["calib"] / HISTOGRAMS_FILE).is_file()
    observers = read_observers(chain["calib"])
    stats = json.loads((chain["calib"] / STATS_FILE).read_text())
    for name, obs in observers.items():
        assert int(obs.counts.sum()) == obs.count == stats["tensors"][name]["input"]["count"]
        assert obs.counts.numel() == stats["bins"] == 2048
        assert -obs.radius <= obs.min <= obs.max <= obs.radius
