"""Running a causal LM the way a user does, in PyTorch or from an llmzip ONNX export: prefill, greedy decode with
the KV cache, perplexity. `llmzip generate` and the causal-LM bench both stand on it.

One NLL scorer for every runner (numpy, float64 log-sum-exp over the runner's logits), so perplexities of
PyTorch, onnxruntime and other runtimes differ only by what the models compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

CACHE_INPUT = "past_key_values.{}.{}"
CACHE_OUTPUT = "present.{}.{}"


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder config (a transformers config or config.json as a namespace)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def empty_cache(config: Any, batch: int, length: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    layers, kv_heads, head_dim = cache_shape(config)
    return {
        CACHE_INPUT.format(i, kv): np.zeros((batch, kv_heads, length, head_dim), dtype=dtype)
        for i in range(layers)
        for kv in ("key", "value")
    }


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword a transformers model takes its KV cache by: `cache` (transformers ≥ 5.2x) or `past_key_values`."""
    import inspect

    return {"cache": cache} if "cache" in inspect.signature(model.forward).parameters else {"past_key_values": cache}


def returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def read_config(directory: Path) -> Any:
    """The model config of an export or model folder, through transformers' AutoConfig so that every family's
    attribute aliases resolve (GPT-2's n_head / n_layer / n_embd are num_attention_heads / num_hidden_layers /
    hidden_size there) — config.json as a plain namespace misses them."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(directory), trust_remote_code=False)


class Runner(Protocol):
    name: str

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        """Logits [batch, length, vocabulary] of a prompt [batch, length] and the cache after it."""

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Logits [batch, 1, vocabulary] of one more token per row [batch, 1] and the grown cache."""


@dataclass
class _OrtState:
    cache: dict[str, np.ndarray]
    length: int


class OrtRunner:
    """An llmzip causal-LM export (see llmzip/onnx/lm_export.py) in an onnxruntime session."""

    def __init__(
        self, path: Path, config: Any, *, threads: int = 1, name: str = "onnxruntime", provider: Any = None
    ) -> None:
        from llmzip.config import Provider
        from llmzip.runtime.sessions import session

        self.session = session(path, provider=provider or Provider.CPU, threads=threads)
        self.config, self.name = config, name
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, ids: np.ndarray, cache: dict[str, np.ndarray], past: int) -> tuple[np.ndarray, _OrtState]:
        batch, length = ids.shape
        feeds: dict[str, np.ndarray] = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, past + length), dtype=np.int64),
            **cache,
        }
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.tile(np.arange(past, past + length, dtype=np.int64), (batch, 1))
        out = dict(zip(self.outputs, self.session.run(None, feeds)))
        grown = {CACHE_INPUT.format(*n.split(".")[1:]): v for n, v in out.items() if n.startswith("present.")}
        return out["logits"], _OrtState(grown, past + length)

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, _OrtState]:
        return self._run(ids, empty_cache(self.config, ids.shape[0]), 0)

    def step(self, tokens: np.ndarray, state: _OrtState) -> tuple[np.ndarray, _OrtState]:
        return self._run(tokens, state.cache, state.length)


class TorchRunner:
    """A transformers causal LM (fp32, or llmzip's weight-only layers) with its DynamicCache."""

    def __init__(self, model: Any, *, threads: int = 1, name: str = "pytorch", device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(threads)
        self.model, self.name, self.device = model.eval().to(device), name, device

    def _run(self, ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]:
        import torch

        with torch.no_grad():
            ids_t = torch.from_numpy(ids.astype(np.int64)).to(self.device)
            out = self.model(input_ids=ids_t, use_cache=True, **with_cache(self.model, cache))
        return out.logits.float().cpu().numpy(), returned_cache(out)

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        from transformers import DynamicCache

        return self._run(ids, DynamicCache(config=self.model.config))

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._run(tokens, state)


def token_nll(logits: np.ndarray, targets: np.ndarray, chunk: int = 64) -> float:
    """Σ −log softmax(logits)[target] over positions (logits [T, V] predict targets [T]), in float64, `chunk`
    positions at a time (a whole 512 × 49k window in float64 would hold ~400 MB of temporaries)."""
    total = 0.0
    for i in range(0, len(targets), chunk):
        z = logits[i : i + chunk].astype(np.float64)
        top = z.max(-1, keepdims=True)
        log_norm = np.log(np.exp(z - top).sum(-1)) + top[:, 0]
        total += float((log_norm - z[np.arange(len(z)), targets[i : i + chunk]]).sum())
    return total


def perplexity(runner: Runner, windows: np.ndarray) -> dict[str, Any]:
    """exp(mean NLL) of each window's tokens 1..T−1 given the ones before, windows scored independently."""
    total, count = 0.0, 0
    for window in windows:
        logits, _ = runner.prefill(window[None, :])
        total += token_nll(logits[0, :-1], window[1:])
        count += len(window) - 1
    return {"perplexity": float(np.exp(total / count)), "scored_tokens": count, "windows": len(windows)}


def greedy(
    runner: Runner, prompt: np.ndarray, new_tokens: int, eos: int | None = None
) -> tuple[list[int], dict[str, float]]:
    """Up to `new_tokens` greedy tokens after `prompt` [length] (stopping after `eos` when given), and the
    prefill/decode wall times. The first new token comes from the prefill's logits; each other costs one decode
    step."""
    started = time.perf_counter()
    logits, state = runner.prefill(prompt[None, :])
    prefill_s = time.perf_counter() - started
    tokens = [int(logits[0, -1].argmax())]
    started = time.perf_counter()
    while len(tokens) < new_tokens and (eos is None or tokens[-1] != eos):
        logits, state = runner.step(np.array([[tokens[-1]]], dtype=np.int64), state)
        tokens.append(int(logits[0, -1].argmax()))
    decode_s = time.perf_counter() - started
    return tokens, {"prefill_s": prefill_s, "decode_s": decode_s, "decode_steps": len(tokens) - 1}


def timed(fn: Any, repeats: int) -> dict[str, float]:
    """Median, min and max wall time (ms) of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return {"median": float(np.median(times)), "min": float(min(times)), "max": float(max(times))}


def load_runner(directory: Path, *, threads: int, name: str, verb: str = "bench", provider: str = "cpu") -> Runner:
    """An export in onnxruntime (on `provider`, through the one session factory) or a model folder in PyTorch
    (on the CUDA device for a GPU provider), after the artifact's integrity check."""
    from llmzip.artifact import EXTERNAL, open_artifact
    from llmzip.config import Provider

    accepts = ("import", "finetune", "distill", "quantize", "export", EXTERNAL)
    artifact = open_artifact(directory, verb=verb, accepts=accepts, role="model directory")
    if artifact.stage == "export":
        model_file = str(artifact.manifest.get("model_file", "model.onnx"))
        return OrtRunner(
            directory / model_file, read_config(directory), threads=threads, name=name, provider=Provider(provider)
        )
    from llmzip.modeling import load_model

    return TorchRunner(load_model(artifact), threads=threads, name=name, device=_torch_device(Provider(provider)))


def _torch_device(provider: Any) -> str:
    if not provider.gpu:  # the CPU provider and OpenVINO's rows run PyTorch on the CPU
        return "cpu"
    import torch

    from llmzip.errors import ProviderError

    if not torch.cuda.is_available():
        raise ProviderError("PyTorch here has no CUDA device; use --provider cpu")
    return "cuda"


def check_positions(config: Any, prompt_tokens: int, new_tokens: int, source: Path) -> None:
    """Refuse a prompt + continuation beyond the model's positions before it becomes a garbage continuation
    (PyTorch) or an error deep inside onnxruntime's GroupQueryAttention (whose rotary cache has that many rows).
    The last new token is never fed back, so `prompt + new − 1` positions are used."""
    from llmzip.errors import ConfigError
    from llmzip.positions import max_tokens

    limit = max_tokens(config)
    if limit is None or prompt_tokens + new_tokens - 1 <= limit:
        return
    if prompt_tokens > limit:
        raise ConfigError(
            f"the prompt is {prompt_tokens} tokens, beyond the {limit} token positions of {source}; shorten it"
        )
    raise ConfigError(
        f"a {prompt_tokens}-token prompt + {new_tokens} new tokens exceeds the {limit} token positions of {source}; "
        f"use --max-new-tokens {limit - prompt_tokens + 1} or less, or a shorter prompt"
    )


def generate_text(
    directory: Path, prompt: str, *, max_new_tokens: int, threads: int, provider: str = "cpu"
) -> dict[str, Any]:
    """`llmzip generate`: greedy continuation of `prompt` (stops at EOS) with its timings."""
    from llmzip.errors import ConfigError
    from llmzip.modeling import load_tokenizer, source_config
    from llmzip.tasks import TaskKind, task_of

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    from llmzip.artifact import EXTERNAL, open_artifact

    # first the directory itself: a missing folder or a wrong stage is named as such, not as a hub-id problem
    open_artifact(directory, verb="generate", accepts=("import", "finetune", "distill", "quantize", "export", EXTERNAL))
    config = source_config(directory)
    if task_of(config).kind is not TaskKind.CAUSAL_LM:
        raise ConfigError(
            f"{directory}: not a causal LM (transformers does not map its architecture as one); generate needs one"
        )
    tokenizer = load_tokenizer(directory)
    ids = np.array(tokenizer(prompt, add_special_tokens=True).input_ids, dtype=np.int64)
    if len(ids) == 0:
        raise ConfigError("the prompt is empty after tokenization; give some text")
    check_positions(config, len(ids), max_new_tokens, directory)
    runner = load_runner(directory, threads=threads, name=directory.name, verb="generate", provider=provider)
    tokens, times = greedy(runner, ids, max_new_tokens, eos=tokenizer.eos_token_id)
    steps, decode_s = times["decode_steps"], times["decode_s"]
    return {
        "prompt": prompt,
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "token_ids": tokens,
        "new_tokens": len(tokens),
        "prefill_ms": times["prefill_s"] * 1e3,
        "decode_tokens_per_s": steps / decode_s if steps and decode_s > 0 else 0.0,
        "runtime": "onnxruntime" if isinstance(runner, OrtRunner) else "pytorch",
        "threads": threads,
        "provider": provider,
    }
