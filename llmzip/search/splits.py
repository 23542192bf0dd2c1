"""Which split chooses and which split reports, checked before a search starts.

A search that reports the accuracy of the split it selected on reports a number it tuned (the budget was checked on
it): the two must differ. And a selection split whose rows are pieces of training rows (SST-2's GLUE `validation`
of held-out *phrases* is the case that misled bench-compress) scores students far above what they do on whole
sentences: the search says so loudly.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from llmzip import data as data_mod
from llmzip.config import BenchConfig, DataConfig
from llmzip.errors import ConfigError

LEAK_SAMPLE = 200  # selection rows checked against the training text
LEAK_SHARE = 0.5  # more than this share found verbatim inside training rows: the selection split leaks


def report_split(selection: DataConfig, bench: BenchConfig, *, bench_split_given: bool) -> BenchConfig:
    """The bench config whose eval split reports: the one given, else the data's `test` split; refused when it would
    be the selection split itself."""
    same_data = data_mod.dataset_location(selection) == data_mod.dataset_location(bench.data)
    if not same_data or bench.data.eval_split != selection.eval_split:
        return bench
    if not bench_split_given and selection.eval_split != "test" and _has_split(bench.data, "test"):
        return replace(bench, data=replace(bench.data, eval_split="test"))
    raise ConfigError(
        f"bench.data.eval_split: the reported split is the selection split ({selection.eval_split!r}), so the "
        "reported accuracy would be the number the budget was tuned on; name another split for the report "
        "(e.g. bench.data.eval_split: test) or select on another (compress.data.eval_split)"
    )


def _has_split(cfg: DataConfig, split: str) -> bool:
    location = Path(data_mod.dataset_location(cfg)).expanduser()
    if location.is_file():
        return False  # one file serves every split: there is no separate test split
    return data_mod.resolve(cfg, split) is not None if location.is_dir() else True


def leak_warning(selection: DataConfig, seed: int = 0) -> str | None:
    """A warning when most sampled selection rows occur verbatim inside training rows (phrases of training
    sentences, or duplicates), else None."""
    if selection.eval_split == selection.train_split:
        return None
    train = data_mod.load_split(selection, selection.train_split)
    chosen = data_mod.load_split(selection, selection.eval_split, optional=True)
    if train is None or chosen is None:
        return None
    texts, _ = data_mod.texts(chosen[0], selection)
    sample = random.Random(seed).sample(texts, min(LEAK_SAMPLE, len(texts)))
    haystack = "\n".join(data_mod.texts(train[0], selection)[0])
    found = sum(1 for t in sample if t.strip() and t.strip() in haystack)
    if found <= LEAK_SHARE * len(sample):
        return None
    return (
        f"{found} of {len(sample)} sampled rows of the selection split {selection.eval_split!r} occur verbatim inside "
        f"training rows of {selection.train_split!r}: it measures memorised phrases, not held-out text, and will "
        "rank students too high; select on held-out full examples (e.g. ../shared/data/sst2-sentences)"
    )


__all__ = ["leak_warning", "report_split"]
