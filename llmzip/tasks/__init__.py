"""The task seam: what sequence classification and causal language modelling do differently, behind one interface.

A stage asks the task of its model (`task_of(config)`) how to load it, how to turn data into calibration batches
and which metric scores it; the stages themselves stay task-agnostic. Adding token classification or QA is adding
a module here, not a branch in every stage.
"""

from __future__ import annotations

from typing import Any

from llmzip.tasks.base import Task, TaskKind
from llmzip.tasks.causal_lm import CausalLM
from llmzip.tasks.classification import SequenceClassification
from llmzip.tasks.sentence_embedding import SPEC_KEY, SentenceEmbedding
from llmzip.tasks.token_classification import TokenClassification

TASKS: dict[TaskKind, Task] = {
    TaskKind.SEQUENCE_CLASSIFICATION: SequenceClassification(),
    TaskKind.TOKEN_CLASSIFICATION: TokenClassification(),
    TaskKind.CAUSAL_LM: CausalLM(),
    TaskKind.SENTENCE_EMBEDDING: SentenceEmbedding(),
}


def task_of(config: Any) -> Task:
    """The task a model config describes: an architecture transformers maps as a causal LM (`*ForCausalLM`, and older
    names such as GPT2LMHeadModel) is one, a `*ForTokenClassification` a token classifier, anything else a sequence
    classifier."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if isinstance(getattr(config, SPEC_KEY, None), dict):
        return TASKS[TaskKind.SENTENCE_EMBEDDING]
    archs = [str(a) for a in getattr(config, "architectures", None) or []]
    lm_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if any(a.endswith("ForCausalLM") or a in lm_names for a in archs):
        return TASKS[TaskKind.CAUSAL_LM]
    if any(a.endswith("ForTokenClassification") for a in archs):
        return TASKS[TaskKind.TOKEN_CLASSIFICATION]
    return TASKS[TaskKind.SEQUENCE_CLASSIFICATION]


def get(kind: TaskKind | str) -> Task:
    return TASKS[TaskKind(kind)]


def checked_task(config: Any, model_config: Any, where: Any) -> Task:
    """The task of `model_config`, after refusing every option of the stage `config` that would not apply to it
    (the one table in llmzip/scope.py)."""
    from llmzip import scope

    chosen = getattr(config, "task", None)  # finetune --task: a pretrained encoder gets this task's head
    task = TASKS[TaskKind(chosen)] if chosen is not None else task_of(model_config)
    scope.check(config, scope.Scope(task.kind.value, task_weight_only=task.weight_only, where=str(where)))
    return task


__all__ = [
    "TASKS",
    "CausalLM",
    "SentenceEmbedding",
    "SequenceClassification",
    "Task",
    "TaskKind",
    "TokenClassification",
    "checked_task",
    "get",
    "task_of",
]
