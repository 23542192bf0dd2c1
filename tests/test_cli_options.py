"""Flags defined once: every stage option comes from its config field (llmzip/config/flags.py →
llmzip/cli/options.py), no flag users call disappears, and a flag's value lands where the field says."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main

from llmzip import config as cfg
from llmzip.cli import app
from llmzip.cli.options import config_options
from llmzip.config.flags import flag_of
from tests.conftest import invoke

FLAGS_FILE = Path(__file__).parent / "data" / "cli_flags.txt"


def _cli_flags() -> set[str]:
    command = typer.main.get_command(app)
    out = set()
    for verb, sub in command.commands.items():  # type: ignore[attr-defined]
        for p in sub.params:
            if isinstance(p, typer.core.TyperOption) and p.opts != ["--help"]:
                out.add(f"{verb} {'/'.join(p.opts[:1] + p.secondary_opts)}")
    return out


def test_no_flag_that_users_call_disappears() -> None:
    known = {line for line in FLAGS_FILE.read_text().splitlines() if line and not line.startswith("#")}
    missing = sorted(known - _cli_flags())
    assert not missing, f"flags dropped or renamed: {missing}"


@pytest.mark.parametrize("stage", sorted(cfg.STAGE_CONFIGS))
def test_every_config_field_is_one_flag_with_help(stage: str) -> None:
    config_cls = cfg.STAGE_CONFIGS[stage]
    hints = typing.get_type_hints(config_cls)
    expected = set()
    for f in dataclasses.fields(config_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            unused = getattr(config_cls, "UNUSED_DATA", ())
            expected |= {("data", d.name) for d in dataclasses.fields(hints[f.name]) if d.name not in unused}
            continue
        flag = flag_of(f)
        assert flag is not None and len(flag.help) > 8, f"{stage}.{f.name}: declare it with option(help=...)"
        if flag.cli:
            expected.add((f.name,))
    options = config_options(stage)
    assert {o.path for o in options} == expected
    assert len({o.param for o in options}) == len(options)  # one Python parameter per option


def _captured(monkeypatch: pytest.MonkeyPatch, module: str, *args: Any) -> Any:
    """The config a verb hands its stage function (the stage itself is not run)."""
    import importlib

    seen: dict[str, Any] = {}

    def fake(*_: Any, config: Any, **__: Any) -> Path:
        seen["config"] = config
        raise SystemExit(0)

    stage = importlib.import_module(f"llmzip.stages.{module}")
    monkeypatch.setattr(stage, module, fake)
    try:
        invoke(*args)
    except SystemExit:
        pass
    return seen["config"]


def test_flags_land_in_their_fields_over_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {dataset: d.tsv, text_column: text}\nquantize: {weight_block_size: 64, method: percentile}\n"
    )
    config = _captured(
        monkeypatch,
        "quantize",
        *("quantize", tmp_path / "m", tmp_path / "c", "-o", tmp_path / "o", "--recipe", recipe),
        *("--weight-bits", "4", "--exclude", "a", "--exclude", "b", "--weight-asymmetric", "--max-eval-samples", "7"),
    )
    assert (config.weight_bits, config.weight_only, config.weight_symmetric) == (4, True, False)
    assert config.exclude == ["a", "b"] and config.data.max_eval_samples == 7
    # unset flags keep the recipe's values (its shared data section too), and the config's defaults otherwise
    assert (config.weight_block_size, config.method) == (64, cfg.CalibrationMethod.PERCENTILE)
    assert (config.data.dataset, config.data.text_column, config.percentile) == ("d.tsv", "text", 99.99)


def test_list_renamed_and_boolean_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _captured(
        monkeypatch,
        "distill",
        *("distill", tmp_path / "t", "-o", tmp_path / "o", "--layers", "0,2", "--lr", "1e-4", "--grad-accum", "2"),
        *("--no-teacher-cache", "--bf16", "--data", "x.tsv", "--weight-decay", "0.1"),
    )
    assert config.layers == [0, 2] and config.learning_rate == 1e-4 and config.gradient_accumulation_steps == 2
    assert (config.teacher_cache, config.bf16, config.data.dataset, config.weight_decay) == (False, True, "x.tsv", 0.1)
    bench = _captured(
        monkeypatch,
        "bench",
        *("bench", tmp_path / "a", "--batch-sizes", "1,4", "--baseline", "ort-dynamic-int8", "--provider", "cpu"),
    )
    assert bench.batch_sizes == [1, 4] and bench.baselines == ["ort-dynamic-int8"]
    assert bench.provider is cfg.Provider.CPU  # enums stay enums


def test_export_records_accuracy_when_given_data_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("export", tmp_path / "m", "-o", tmp_path / "o")
    assert _captured(monkeypatch, "export", *args).eval_accuracy is False
    assert _captured(monkeypatch, "export", *args, "--data", "d.tsv").eval_accuracy is True
    assert _captured(monkeypatch, "export", *args, "--data", "d.tsv", "--no-eval-accuracy").eval_accuracy is False


def test_help_states_the_config_default() -> None:
    result = invoke("quantize", "--help")
    assert "(default: 32)" in " ".join(result.stdout.split())  # weight_block_size, from QuantizeConfig
