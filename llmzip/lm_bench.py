"""bench for causal LMs: perplexity, prefill latency, decode tokens/s, peak memory and size, variant by variant.

Each variant runs in a fresh worker process (`python -m llmzip.lm_bench`) so that its peak RSS is its own, not
the largest model's loaded earlier in the same process, and an onnxruntime variant never pays for importing
torch. Latency noise is handled as in the classifier bench: every number is a median over repeats with its min
and max beside it, and the machine's load during the run is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.lm_runtime import OrtRunner, Runner, TorchRunner, greedy, perplexity, read_config, timed

WINDOWS_FILE, PROMPT_FILE = "windows.npy", "prompt.npy"


def size_mb(directory: Path) -> float:
    """Bytes of the model weights a variant ships: its .onnx (+ external data, e.g. a genai build's model.onnx.data)
    or .safetensors files."""
    files = [p for p in directory.iterdir() if p.is_file() and (".onnx" in p.name or p.suffix == ".safetensors")]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which a child started by
    fork+exec inherits from its parent: every worker would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_runner(directory: Path, *, threads: int, name: str, verb: str = "bench") -> Runner:
    """An export in onnxruntime or a model folder in PyTorch, after the artifact's integrity check."""
    from llmzip.artifact import EXTERNAL, open_artifact

    accepts = ("import", "finetune", "distill", "quantize", "export", EXTERNAL)
    artifact = open_artifact(directory, verb=verb, accepts=accepts, role="model directory")
    if artifact.stage == "export":
        model_file = str(artifact.manifest.get("model_file", "model.onnx"))
        return OrtRunner(directory / model_file, read_config(directory), threads=threads, name=name)
    from llmzip.modeling import load_model

    return TorchRunner(load_model(artifact), threads=threads, name=name)


def measure_variant(
    directory: Path,
    windows: np.ndarray,
    prompt: np.ndarray,
    *,
    name: str,
    threads: int,
    new_tokens: int,
    prefill_lengths: list[int],
    repeats: int,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Everything the causal-LM bench reports for one model directory, measured in this process (`extra`: more
    window sets, named, whose perplexity is also measured)."""
    started = time.time()
    runner = load_runner(directory, threads=threads, name=name)
    load_s = time.time() - started
    stream = windows.reshape(-1)
    prefill = {
        str(length): timed(lambda n=length: runner.prefill(stream[None, :n]), repeats) for length in prefill_lengths
    }
    runs = [greedy(runner, prompt, new_tokens) for _ in range(repeats + 1)][1:]  # the first run warms up
    rates = [r[1]["decode_steps"] / r[1]["decode_s"] for r in runs]
    ms_per_token = [1e3 / r for r in rates]
    scored = perplexity(runner, windows)
    also = {name: round(perplexity(runner, w)["perplexity"], 4) for name, w in (extra or {}).items()}
    return {
        "name": name,
        "path": str(directory),
        "runtime": "onnxruntime" if isinstance(runner, OrtRunner) else "pytorch",
        "perplexity": round(scored["perplexity"], 4),
        "scored_tokens": scored["scored_tokens"],
        **({"perplexity_also": also} if also else {}),
        "decode_tokens_per_s": round(float(np.median(rates)), 2),
        "decode_tokens_per_s_range": [round(min(rates), 2), round(max(rates), 2)],
        "decode_ms_per_token": round(float(np.median(ms_per_token)), 2),
        "prefill_ms": {k: round(v["median"], 1) for k, v in prefill.items()},
        "prefill_ms_range": {k: [round(v["min"], 1), round(v["max"], 1)] for k, v in prefill.items()},
        "size_mb": size_mb(directory),
        "peak_rss_mb": peak_rss_mb(),
        "load_s": round(load_s, 2),
        "generated_ids": runs[0][0],
        "threads": threads,
        "repeats": repeats,
    }


def run_worker(directory: Path, work: Path, *, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """measure_variant in a fresh `python -m llmzip.lm_bench` process; raises RuntimeError with its last line."""
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "llmzip.lm_bench", str(directory), str(work), name, json.dumps(params), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()] or ["no output"]
        raise RuntimeError(f"{name}: the measuring process failed: {lines[-1][:300]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def eval_windows(config: Any, tokenizer: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The first data.max_eval_samples (default 20) windows of data.max_length tokens of the eval split's text."""
    from llmzip import data as data_mod
    from llmzip.errors import DataError
    from llmzip.tasks.causal_lm import windows

    d = config.data
    text, source = data_mod.load_text(d, d.eval_split)
    count = d.max_eval_samples or 20
    chunks = windows(tokenizer, text, d.max_length, d.skip_tokens)[:count]
    if len(chunks) < count:
        raise DataError(
            f"{data_mod.dataset_location(d)} ({d.eval_split}): {len(chunks)} windows of {d.max_length} tokens, "
            f"{count} asked for; give more text, a smaller --max-length or --max-eval-samples"
        )
    described = {**source, "split": d.eval_split, "windows": count, "window_tokens": d.max_length}
    return np.array(chunks, dtype=np.int64), described


def _check_workload(model_config: Any, config: Any, window: int, directory: Path) -> None:
    """Every sequence the bench runs must fit the model's positions: the perplexity windows, each prefill
    length, and the decode prompt + new tokens."""
    from llmzip.errors import ConfigError
    from llmzip.lm_runtime import check_positions
    from llmzip.modeling import max_tokens

    limit = max_tokens(model_config)
    if limit is None:
        return
    for what, length in (("--max-length", window), ("--prefill-lengths", max(config.prefill_lengths))):
        if length > limit:
            raise ConfigError(
                f"{what} {length} exceeds the {limit} token positions of {directory}; use {limit} or less"
            )
    try:
        check_positions(model_config, config.prompt_tokens, config.new_tokens, directory)
    except ConfigError:
        raise ConfigError(
            f"--prompt-tokens {config.prompt_tokens} + --new-tokens {config.new_tokens} exceeds the {limit} token "
            f"positions of {directory}; lower them"
        ) from None


def bench_causal_lm(directories: list[Path], names: list[str], config: Any, work: Path) -> dict[str, Any]:
    """Every directory measured by its own worker process on the same windows and prompt; the machine's load
    during the run is recorded beside the numbers."""
    from llmzip.config import to_dict
    from llmzip.machine import CpuLoad, machine_info
    from llmzip.modeling import load_tokenizer
    from llmzip.progress import step

    tokenizer = load_tokenizer(directories[0])
    windows, described = eval_windows(config, tokenizer)
    stream = windows.reshape(-1)
    longest = max([config.prompt_tokens, *config.prefill_lengths])
    if longest > len(stream):
        from llmzip.errors import ConfigError

        raise ConfigError(
            f"prompts of {longest} tokens need more than the {len(stream)} tokens of the eval windows; lower "
            "--prefill-lengths / --prompt-tokens or give more windows (--max-eval-samples)"
        )
    for directory in directories:
        if not (directory / "genai_config.json").is_file():  # a genai build is checked by its own runtime
            _check_workload(read_config(directory), config, windows.shape[1], directory)
    np.save(work / WINDOWS_FILE, windows)
    np.save(work / PROMPT_FILE, stream[: config.prompt_tokens])
    extra: dict[str, str] = {}
    for i, source in enumerate(config.also_score):
        other = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=source, skip_tokens=0))
        other_windows, other_described = eval_windows(other, tokenizer)
        name = Path(source).stem or f"text{i}"
        np.save(work / f"extra-{i}.npy", other_windows)
        extra[name] = f"extra-{i}.npy"
        described.setdefault("also_scored", {})[name] = other_described
    params = {
        "threads": config.threads,
        "new_tokens": config.new_tokens,
        "prefill_lengths": config.prefill_lengths,
        "repeats": config.lm_repeats,
        "extra": extra,
    }
    variants = []
    with CpuLoad() as load:
        for directory, name in zip(directories, names):
            step(f"measuring {name} ({directory}) in its own process")
            if (directory / "genai_config.json").is_file():
                row = genai_row(directory, work, name=name, params=params)
            else:
                row = run_worker(directory, work, name=name, params=params)
            row["generated_text"] = tokenizer.decode(row["generated_ids"])
            variants.append(row)
    return {
        "machine": {**machine_info(), "cpu_load": load.summary()},
        "config": to_dict(config),
        "data": described,
        "workload": {
            "perplexity": f"{len(windows)} non-overlapping windows of {windows.shape[1]} tokens, each scored alone",
            "prefill": f"batch 1, prompts of {config.prefill_lengths} tokens",
            "decode": f"{config.new_tokens} greedy tokens after a {config.prompt_tokens}-token prompt, batch 1; "
            "tokens/s counts the decode steps after the prefill",
            "threads": config.threads,
        },
        "variants": variants,
        "warnings": [],
    }


def render_markdown(result: dict[str, Any]) -> str:
    others = list(result["variants"][0].get("perplexity_also", {}))
    rows = [
        "| variant | runtime | perplexity "
        + "".join(f"| ppl {o} " for o in others)
        + "| decode tok/s (min–max) | ms/token | prefill ms "
        + " / ".join(result["variants"][0]["prefill_ms"])
        + " | size MB | peak RSS MB |",
        "|---|---|---:|" + "---:|" * len(others) + "---:|---:|---:|---:|---:|",
    ]
    for v in result["variants"]:
        lo, hi = v["decode_tokens_per_s_range"]
        prefill = " / ".join(f"{ms:.0f}" for ms in v["prefill_ms"].values())
        also = "".join(f"| {v.get('perplexity_also', {}).get(o, float('nan')):.2f} " for o in others)
        rows.append(
            f"| {v['name']} | {v['runtime']} | {v['perplexity']:.2f} {also}"
            f"| {v['decode_tokens_per_s']:.1f} ({lo:.1f}–{hi:.1f}) | {v['decode_ms_per_token']:.1f} | {prefill} "
            f"| {v['size_mb']:.0f} | {v['peak_rss_mb']:.0f} |"
        )
    m = result["machine"]
    return "\n".join(
        [
            f"Machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, load during the run "
            f"{(m.get('cpu_load') or {}).get('mean_pct', '?')}% busy; {result['workload']['threads']} thread(s).",
            f"Data: {', '.join(result['data'].get('files') or [str(result['data'].get('dataset'))])} "
            f"({result['data']['split']}), "
            f"{result['workload']['perplexity']}.",
            "",
            *rows,
        ]
    )


def genai_row(directory: Path, work: Path, *, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """An onnxruntime-genai build measured by its own runtime in .venv-genai (llmzip/benchmarks/genai.py), as a
    row of the same table: same windows, prompt, token counts, threads and repeats."""
    from llmzip.benchmarks import genai

    got = genai.measure(
        directory,
        np.load(work / WINDOWS_FILE),
        np.load(work / PROMPT_FILE),
        new_tokens=params["new_tokens"],
        prefill_lengths=tuple(params["prefill_lengths"]),
        threads=params["threads"],
        repeats=params["repeats"],
        work=work / f"genai-{name}",
    )
    also = {}
    for other, file in params.get("extra", {}).items():  # perplexity only: the least decode work genai_run takes
        scored = genai.measure(
            directory,
            np.load(work / file),
            np.load(work / PROMPT_FILE)[:8],
            new_tokens=2,
            prefill_lengths=(8,),
            threads=params["threads"],
            repeats=1,
            work=work / f"genai-{name}-{other}",
        )
        also[other] = round(float(scored["perplexity"]), 4)
    rate, per_token = got["decode_tokens_per_s"], got["decode_ms_per_token"]
    return {
        "name": name,
        "path": str(directory),
        "runtime": f"onnxruntime-genai {got.get('onnxruntime_genai', '')}".strip(),
        "perplexity": round(float(got["perplexity"]), 4),
        "scored_tokens": got["scored_tokens"],
        **({"perplexity_also": also} if also else {}),
        "decode_tokens_per_s": round(float(rate["median"]), 2),
        "decode_tokens_per_s_range": [round(float(rate["min"]), 2), round(float(rate["max"]), 2)],
        "decode_ms_per_token": round(float(per_token["median"]), 2),
        "prefill_ms": {k: round(float(v["median"]), 1) for k, v in got["prefill_ms"].items()},
        "prefill_ms_range": {
            k: [round(float(v["min"]), 1), round(float(v["max"]), 1)] for k, v in got["prefill_ms"].items()
        },
        "size_mb": size_mb(directory),
        "peak_rss_mb": got["peak_rss_mb"],
        "generated_ids": [int(t) for t in got.get("generated_ids", [])],
        "threads": params["threads"],
        "repeats": params["repeats"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one causal-LM bench variant (internal: run by llmzip bench)")
    parser.add_argument("directory", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("name")
    parser.add_argument("params")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    windows = np.load(args.work / WINDOWS_FILE)
    prompt = np.load(args.work / PROMPT_FILE)
    extra = {name: np.load(args.work / file) for name, file in params.pop("extra", {}).items()}
    result = measure_variant(args.directory, windows, prompt, name=args.name, extra=extra, **params)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
