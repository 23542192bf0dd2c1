"""Loading models and tokenizers from stage directories, and cutting students out of teachers.

Which Auto class loads a folder is the task's business (llmzip/tasks: a classifier or a causal LM, read from the
config's architectures); the safety checks, layer selection and quantized loading below serve every task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.artifact import Artifact
from llmzip.errors import ArtifactError, ModelError
from llmzip.progress import quiet_libraries

if TYPE_CHECKING:
    from transformers import PreTrainedModel

QUANT_FILE = "quantization.json"


def source_config(source: str | Path) -> Any:
    """The model config of a folder or hub id (no weights loaded), refusing custom code."""
    from transformers import AutoConfig

    from llmzip.tasks.sentence_embedding import SPEC_KEY, read_spec

    refuse_remote_code(source)
    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
    except Exception as err:  # OSError (missing), ValueError (unknown model type), ...: one line for all
        refuse_remote_code(source, err)
        raise ModelError(f"{source}: cannot read its model config ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(getattr(config, SPEC_KEY, None), dict) and Path(source).is_dir():
        spec = read_spec(Path(source))  # a sentence-transformers folder: its pooling is part of the model
        if spec is not None:
            setattr(config, SPEC_KEY, spec)
    return config


ALLOW_PICKLE_ENV = "LLMZIP_ALLOW_PICKLE"  # set by `llmzip --allow-pickle`; off by default


def pickle_allowed() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV) == "1"


def refuse_remote_code(source: str | Path, err: Exception | None = None) -> None:
    """llmzip never runs Python shipped inside a model folder: name what the folder asks for and refuse.

    One rule for every file transformers reads an `auto_map` from (the model's config.json and the tokenizer's
    tokenizer_config.json): either can make `from_pretrained` import the folder's code."""
    for name in ("config.json", "tokenizer_config.json"):
        file = Path(source) / name
        auto_map: Any = None
        if file.is_file():
            try:
                auto_map = json.loads(file.read_text()).get("auto_map")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                auto_map = None
        if auto_map:
            raise ModelError(
                f"{source}: its {name} asks to run Python code from the folder (auto_map: "
                f"{json.dumps(auto_map)[:160]}); llmzip does not run code shipped with a model "
                "(trust_remote_code=False): use an architecture transformers implements"
            )
    if err is not None and "trust_remote_code" in str(err):
        raise ModelError(
            f"{source}: the model asks to run Python code from its folder (custom code); llmzip does not run code "
            "shipped with a model (trust_remote_code=False): use an architecture transformers implements"
        )


def check_finite(model: nn.Module, source: str | Path) -> None:
    """Refuse NaN/Inf weights (a corrupt checkpoint or a diverged training run) before they reach any result."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(
                f"{source}: {name} holds NaN/Inf values (a corrupt checkpoint or a diverged training run); "
                "re-run the stage that wrote it or use another model"
            )


def load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    refuse_remote_code(source)
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except Exception as err:  # transformers raises OSError/ValueError/... for the same user problem
        raise ModelError(
            f"{source}: no usable tokenizer ({str(err).splitlines()[0][:200]}); "
            "the directory needs tokenizer files next to config.json"
        ) from None


def load_pretrained(source: str | Path, *, seed: int = 0, task: Any = None, **kwargs: Any) -> PreTrainedModel:
    """The task's model (classifier or causal LM) from a folder or hub id (a classifier's new head is initialised
    when num_labels is given).

    Safe by default: no code from the model folder runs (trust_remote_code=False), weights load from safetensors
    only (pickle can run code when unpickled) unless `llmzip --allow-pickle`, and a head that the checkpoint
    lacks is initialised from `seed`, so every stage that loads the same folder gets the same model.
    """
    from llmzip.shrink import restore, structure
    from llmzip.tasks import task_of

    quiet_libraries()
    refuse_remote_code(source)
    config = source_config(source)
    auto = (task or task_of(config)).auto_class()  # `task`: finetune --task gives an encoder another task's head
    local = Path(source)
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")) and not pickle_allowed():
        raise ModelError(
            f"{source}: its weights are pickle files only (*.bin), which can run code when loaded; convert them to "
            "safetensors, or pass `llmzip --allow-pickle` if you trust the folder"
        )
    if structure.has_structure(config):
        # Pruned layers are smaller than the config implies, which from_pretrained refuses as a size mismatch.
        model = restore.load_structured(auto, source, seed=seed, **kwargs)
        check_finite(model, source)
        return model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_pretrained(
                str(source), trust_remote_code=False, use_safetensors=None if pickle_allowed() else True, **kwargs
            )
    except Exception as err:  # OSError (missing), ValueError (unsupported arch), ... : one line for all
        refuse_remote_code(source, err)
        raise ModelError(f"{source}: cannot load it as {auto.__name__} ({str(err).splitlines()[0][:200]})") from None
    check_finite(model, source)
    return model.eval()


def load_model(artifact: Artifact) -> PreTrainedModel:
    """The PyTorch model a stage directory holds: fp32 for model stages, fake-quantized for quantize output.

    Models that are measured, quantized or exported here, not saved again, so transformers' Conv1D layers (GPT-2's
    transposed Linear) are plain nn.Linear: every Linear-based step (calibration hooks, quantization, export) then
    sees them. Stages that save a model (finetune, distill, import) load it with load_pretrained, unchanged."""
    if artifact.stage == "quantize":
        return load_quantized(artifact.path)
    return conv1d_as_linear(load_pretrained(artifact.path))


def conv1d_as_linear(model: Any) -> Any:
    """transformers' Conv1D (weight [in, out], y = x·W + b) → the equal nn.Linear (weight Wᵀ), in place."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.weight.shape[0], module.weight.shape[1], bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None and linear.bias is not None:
                    linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)
    return model


def load_quantized(path: Path) -> PreTrainedModel:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from llmzip.quant.modules import QuantEmbedding, QuantLinear, replace_linears, scaled_like
    from llmzip.quant.weight_only import SharedEmbedding, WeightOnlyLinear
    from llmzip.shrink import restore
    from llmzip.tasks import task_of

    quiet_libraries()
    refuse_remote_code(path)
    try:
        spec = json.loads((path / QUANT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path / QUANT_FILE}: unreadable ({err}); re-run `llmzip quantize`") from None
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("scheme"), dict)
        or not isinstance(spec.get("layers"), dict)
    ):
        raise ArtifactError(
            f"{path / QUANT_FILE}: not a quantization spec (no scheme/layers); re-run `llmzip quantize`"
        )
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    model = task_of(config).auto_class().from_config(config)
    restore.restore(model)  # a pruned model's smaller layers, before they are swapped for quantized ones
    conv1d_as_linear(model)  # the quantized layers were Linears when quantize saw them
    scheme = spec["scheme"]

    def make(name: str, linear: nn.Linear) -> nn.Module:
        layer = spec["layers"][name]
        bits = int(layer.get("weight_bits", 8))
        if bits == 4 or layer.get("weight_only", False):
            return WeightOnlyLinear(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                block_size=int(layer.get("block_size", scheme["weight_block_size"])),
                symmetric=bool(layer.get("symmetric", scheme["weight_symmetric"])),
                bits=bits,
                offset=bool(layer.get("offset", False)),
            )
        return QuantLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            per_channel=scheme["weight_granularity"] == "per-channel",
            activation_signed=scheme["activation_symmetric"],
            smooth=bool(spec["layers"][name].get("smooth", False)),
            dynamic=scheme.get("activations", "static") == "dynamic",
        )

    replace_linears(model, list(spec["layers"]), make)
    shared = spec.get("embeddings_shared_with")
    replace_linears(
        model,
        spec.get("embeddings", []),
        lambda n, e: scaled_like(
            SharedEmbedding(model.get_submodule(shared))
            if shared
            else _block_embedding(e, spec["embedding_blocks"])
            if spec.get("embedding_blocks")
            else QuantEmbedding(e.num_embeddings, e.embedding_dim),
            e,
        ),
    )
    if spec.get("attention"):
        from llmzip.quant.attention import AttentionQuant, attach

        attach(model, {name: AttentionQuant() for name in spec["attention"]})
        for name, bits in spec.get("attention_key_bits", {}).items():
            model.get_submodule(name).get_submodule("llmzip_attention").key_qmax = 2 ** (int(bits) - 1) - 1
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied/derived buffers (e.g. position_ids) may legitimately be absent; real weights may not.
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        raise ModelError(
            f"{path}: quantized checkpoint does not match its config "
            f"(missing {real_missing[:3]}, unexpected {unexpected[:3]}); re-run `llmzip quantize`"
        )
    check_finite(model, path)
    return model.eval()


def _block_embedding(embedding: nn.Embedding, spec: dict[str, Any]) -> nn.Module:
    from llmzip.quant.weight_only import BlockEmbedding, WeightOnlyLinear

    table = WeightOnlyLinear(
        embedding.embedding_dim,
        embedding.num_embeddings,
        bias=False,
        block_size=int(spec["block_size"]),
        symmetric=True,
        bits=int(spec["bits"]),
        offset=bool(spec["offset"]),
    )
    return BlockEmbedding(table)


def layer_stack(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The transformer block list: the one ModuleList whose length is config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    stacks = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(stacks) != 1:
        raise ModelError(
            f"{type(model).__name__}: cannot find its stack of {n} transformer layers (found {len(stacks)} candidates)"
        )
    return stacks[0]


def evenly_spaced(num_teacher: int, num_student: int) -> list[int]:
    """DistilBERT's choice for half depth (0, 2, 4 of 6) generalised: every (n/k)-th layer from the bottom."""
    if not 0 < num_student <= num_teacher:
        raise ModelError(f"num_layers must be in [1, {num_teacher}] for this teacher, got {num_student}")
    return [i * num_teacher // num_student for i in range(num_student)]


def select_layers(model: PreTrainedModel, indices: list[int]) -> PreTrainedModel:
    """Keep only the given transformer layers (in that order), in place; everything else is shared as is."""
    name, stack = layer_stack(model)
    n = len(stack)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ModelError(f"layers {bad} do not exist: the teacher has layers 0..{n - 1}")
    kept = nn.ModuleList([stack[i] for i in indices])
    for new_index, layer in enumerate(kept):
        # Attention modules that index a KV cache by layer must see their new position.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", new_index)  # noqa: B010 (not every module declares it)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, kept)
    model.config.num_hidden_layers = len(indices)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return model(**{k: v for k, v in batch.items() if k in keys}).logits
