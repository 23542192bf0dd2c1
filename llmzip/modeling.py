"""Loading models and tokenizers from stage directories, and cutting students out of teachers.

The task seam lives here: today sequence classification; causal LMs plug in as another Task with their own
loader, while the layer-selection and quantized-loading code below is architecture-agnostic.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.artifact import Artifact
from llmzip.errors import ModelError
from llmzip.progress import quiet_libraries

if TYPE_CHECKING:
    from transformers import PreTrainedModel

QUANT_FILE = "quantization.json"


class Task(str, enum.Enum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"


def task_of(config: Any) -> Task:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        raise ModelError(f"{archs[0]}: causal language models are not supported yet; use a sequence classifier")
    return Task.SEQUENCE_CLASSIFICATION


def load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except Exception as err:  # transformers raises OSError/ValueError/... for the same user problem
        raise ModelError(
            f"{source}: no usable tokenizer ({str(err).splitlines()[0][:200]}); "
            "the directory needs tokenizer files next to config.json"
        ) from None


def load_pretrained(source: str | Path, **kwargs: Any) -> PreTrainedModel:
    """A sequence classifier from a folder or hub id (new heads are initialised when num_labels is given)."""
    from transformers import AutoModelForSequenceClassification

    quiet_libraries()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(source), **kwargs)
    except Exception as err:  # OSError (missing), ValueError (unsupported arch), ... : one line for all
        raise ModelError(
            f"{source}: cannot load a sequence-classification model ({str(err).splitlines()[0][:200]})"
        ) from None
    return model.eval()


def load_model(artifact: Artifact) -> PreTrainedModel:
    """The PyTorch model a stage directory holds: fp32 for model stages, fake-quantized for quantize output."""
    if artifact.stage == "quantize":
        return load_quantized(artifact.path)
    return load_pretrained(artifact.path)


def load_quantized(path: Path) -> PreTrainedModel:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from llmzip.quant.modules import QuantEmbedding, QuantLinear, replace_linears
    from llmzip.quant.weight_only import WeightOnlyLinear

    quiet_libraries()
    spec = json.loads((path / QUANT_FILE).read_text())
    config = AutoConfig.from_pretrained(str(path))
    task_of(config)
    model = AutoModelForSequenceClassification.from_config(config)
    scheme = spec["scheme"]

    def make(name: str, linear: nn.Linear) -> nn.Module:
        if spec["layers"][name].get("weight_bits", 8) == 4:
            return WeightOnlyLinear(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                block_size=scheme["weight_block_size"],
                symmetric=scheme["weight_symmetric"],
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
    replace_linears(model, spec.get("embeddings", []), lambda n, e: QuantEmbedding(e.num_embeddings, e.embedding_dim))
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
    return model.eval()


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
