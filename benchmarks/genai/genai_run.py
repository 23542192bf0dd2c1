"""onnxruntime-genai baseline for bench-llm; run with .venv-genai/bin/python (see make_venv.sh).

build --model HF_DIR --out DIR --precision int4|fp32: onnxruntime-genai's model builder for the CPU EP with its
  defaults, into DIR.tmp renamed to DIR at the end; DIR/build.json records the command, versions and source.
measure --model GENAI_DIR --windows W.npy --prompt P.npy [--new-tokens 64 --prefill-lengths 128,512 --threads 1
  --repeats N] --out RESULT.json: decode tokens/s (og.Generator, greedy, EOS off), prefill ms, peak RSS, perplexity.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

BUILDER = "onnxruntime_genai.models.builder"


def source_signature(model_dir: Path) -> dict[str, Any]:
    """What a reused build must match: config.json's hash and the weight files' sizes."""
    return {
        "path": str(model_dir.resolve()),
        "config_sha256": hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
        "weights": {p.name: p.stat().st_size for p in sorted(model_dir.glob("*.safetensors"))},
    }


def build(args: argparse.Namespace) -> None:
    model, out = Path(args.model), Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        cmd = [sys.executable, "-m", BUILDER, "-i", str(model), "-o", str(tmp), "-p", args.precision, "-e", "cpu"]
        cmd += ["-c", cache]  # the builder's default cache is ./cache_dir under the cwd
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"builder failed with exit code {done.returncode}")
    record = {
        "command": ["python", "-m", BUILDER, "-i", str(model), "-o", str(out), "-p", args.precision, "-e", "cpu"],
        "command_as_run": cmd,
        "precision": args.precision,
        "execution_provider": "cpu",
        "extra_options": None,
        "build_seconds": round(seconds, 2),
        "source": source_signature(model),
        "versions": {k: version(k) for k in ("onnxruntime-genai", "onnxruntime", "onnx-ir", "transformers", "torch")},
    }
    (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps({"out": str(out), "build_seconds": record["build_seconds"]}))


def load_model(genai_dir: Path, threads: int) -> Any:
    import onnxruntime_genai as og

    config = og.Config(str(genai_dir))
    # Same place a user would set it: the decoder's session_options in genai_config.json.
    opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    return og.Model(config)


def generator(model: Any, max_length: int) -> Any:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    # min_length == max_length: EOS cannot end the run early; max_length also sizes the shared KV buffer.
    params.set_search_options(max_length=max_length, min_length=max_length, do_sample=False)
    return og.Generator(model, params)


def stats(values: list[float], digits: int = 3) -> dict[str, float]:
    return {k: round(float(f(values)), digits) for k, f in (("median", np.median), ("min", np.min), ("max", np.max))}


def decode_once(model: Any, prompt: np.ndarray, new_tokens: int) -> tuple[float, float, float, list[int]]:
    """(prefill s, decode s, cpu s during decode, generated ids). append_tokens runs the prompt; the first
    generate_next_token only picks from those logits, so new_tokens tokens take new_tokens - 1 forward passes."""
    gen = generator(model, len(prompt) + new_tokens)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in range(new_tokens):
        gen.generate_next_token()
    t2, c2 = time.perf_counter(), time.process_time()
    ids = [int(t) for t in gen.get_sequence(0)[len(prompt) :]]
    if len(ids) != new_tokens:
        raise SystemExit(f"generated {len(ids)} tokens, expected {new_tokens}")
    return t1 - t0, t2 - t1, c2 - c1, ids


def prefill_once(model: Any, ids: np.ndarray) -> float:
    gen = generator(model, len(ids) + 1)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    return time.perf_counter() - t0


def nll(logits: np.ndarray, window: np.ndarray) -> float:
    """Summed next-token NLL of window[1:] under logits[:-1] (float64 log-softmax)."""
    total = 0.0
    for i in range(0, len(window) - 1, 128):  # row chunks keep the float64 copy small
        x = logits[i : min(i + 128, len(window) - 1)].astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
        total += float((logz - x[np.arange(len(x)), window[i + 1 : i + 1 + len(x)]]).sum())
    return total


def perplexity(model: Any, genai_dir: Path, windows: np.ndarray, threads: int) -> tuple[float, int, str]:
    total, scored, source = 0.0, 0, "onnxruntime_genai Generator.get_output('logits')"
    session: Any = None
    for window in windows:
        logits: np.ndarray | None = None
        if session is None:
            gen = generator(model, len(window) + 1)
            gen.append_tokens(window)
            out = np.asarray(gen.get_output("logits"))
            if out.shape == (1, len(window), out.shape[-1]):
                logits = out[0]
            else:  # only the last position: run the decoder graph itself over the whole window
                session = ort_session(genai_dir, threads)
                source = f"onnxruntime InferenceSession on model.onnx (genai logits were {list(out.shape)})"
        if logits is None:
            logits = ort_logits(session, window)
        total += nll(logits, window)
        scored += len(window) - 1
    return float(np.exp(total / scored)), scored, source


def ort_session(genai_dir: Path, threads: int) -> Any:
    import onnxruntime as ort

    cfg = json.loads((genai_dir / "genai_config.json").read_text())["model"]["decoder"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(genai_dir / cfg["filename"]), so, providers=["CPUExecutionProvider"])
    session.head_size = cfg["head_size"]  # past_key_values' last dim is symbolic (kv_cache_dim)
    return session


def ort_logits(session: Any, window: np.ndarray) -> np.ndarray:
    """Whole window in one call with empty past_key_values; returns [len, vocab]."""
    feeds: dict[str, np.ndarray] = {}
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
    for inp in session.get_inputs():
        dtype = types.get(inp.type, np.float16)
        if inp.name == "input_ids":
            feeds[inp.name] = window[None].astype(dtype)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, len(window)), dtype=dtype)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.arange(len(window), dtype=dtype)[None]
        else:  # past_key_values.N.key/value: [batch, kv_heads, 0, head_size]
            feeds[inp.name] = np.zeros([1, inp.shape[1], 0, session.head_size], dtype=dtype)
    return np.asarray(session.run(["logits"], feeds)[0][0])


def rss_mb() -> float:
    # VmHWM, not ru_maxrss: a process started by fork+exec inherits its parent's ru_maxrss (llmzip's bench runs
    # this script from a process that may already hold hundreds of MB); VmHWM starts fresh at exec.
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(args: argparse.Namespace) -> None:
    genai_dir = Path(args.model)
    windows = np.load(args.windows).astype(np.int64)
    prompt = np.load(args.prompt).astype(np.int64).reshape(-1)
    lengths = [int(x) for x in args.prefill_lengths.split(",") if x]
    if max(lengths) > windows.shape[1]:
        raise SystemExit(f"prefill length {max(lengths)} > window length {windows.shape[1]}")
    start = time.perf_counter()
    model = load_model(genai_dir, args.threads)
    decode_once(model, prompt, args.new_tokens)  # warm-up, not counted
    runs = [decode_once(model, prompt, args.new_tokens) for _ in range(args.repeats)]
    generated = runs[0][3]
    if any(r[3] != generated for r in runs):
        raise SystemExit("greedy decode differed between repeats")
    prefill: dict[str, dict[str, float]] = {}
    for n in lengths:
        ids = windows[0][:n]  # prefill prompts: the first n tokens of the first window
        prefill_once(model, ids)
        prefill[str(n)] = stats([prefill_once(model, ids) * 1e3 for _ in range(args.repeats)], 2)
    rss_generation = rss_mb()
    ppl, scored, source = perplexity(model, genai_dir, windows, args.threads)
    result = {
        # per decode forward pass (the first new token comes from the prefill), as llmzip's own runner counts
        "decode_tokens_per_s": stats([(args.new_tokens - 1) / r[1] for r in runs], 2),
        "decode_ms_per_token": stats([r[1] * 1e3 / (args.new_tokens - 1) for r in runs], 3),
        "decode_cpu_per_wall": round(float(np.median([r[2] / r[1] for r in runs])), 2),
        "decode_forward_passes": args.new_tokens - 1,
        "prompt_prefill_ms": stats([r[0] * 1e3 for r in runs], 2),
        "prefill_ms": prefill,
        "peak_rss_mb": rss_mb(),
        "peak_rss_mb_before_perplexity": rss_generation,
        "perplexity": round(ppl, 4),
        "scored_tokens": scored,
        "windows": int(windows.shape[0]),
        "threads": args.threads,
        **dict(window_length=int(windows.shape[1]), prompt_tokens=len(prompt), new_tokens=args.new_tokens),
        "repeats": args.repeats,
        "generated_ids": generated,
        "logits_source": source,
        "onnxruntime_genai": version("onnxruntime-genai"),
        "onnxruntime": version("onnxruntime"),
        "model_dir": str(genai_dir),
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("decode_tokens_per_s", "perplexity", "peak_rss_mb")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--precision", choices=["int4", "fp32"], required=True)
    m = sub.add_parser("measure")
    for p in (b, m):
        p.add_argument("--model", required=True)
        p.add_argument("--out", required=True)
    for flag in ("--windows", "--prompt"):
        m.add_argument(flag, required=True)
    for flag, default in (("--new-tokens", 64), ("--threads", 1), ("--repeats", 5)):
        m.add_argument(flag, type=int, default=default)
    m.add_argument("--prefill-lengths", default="128,512")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
