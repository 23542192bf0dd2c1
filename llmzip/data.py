"""Labelled text for every stage, through `datasets`: a hub id, a local folder of split files, or one file."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmzip.artifact import sha256_paths
from llmzip.config import DataConfig
from llmzip.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

DEMO_DATASET = Path(__file__).parent / "resources" / "demo_sentiment"
LOCAL_FORMATS = {
    ".tsv": "csv",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".raw": "text",  # WikiText's wiki.{train,valid,test}.raw
}
# Causal-LM text stops here (WikiText-103's 540 MB would take a long tokenization before the first step); the
# manifest's data block says when it did (`truncated_at_chars`), so nothing is dropped silently.
MAX_TEXT_CHARS = 64_000_000


@dataclass
class Source:
    """Where a split comes from, resolved once so the manifest can record (and hash) exactly what was read."""

    kind: str  # "local" | "hub"
    name: str
    files: list[Path]

    def describe(self) -> dict[str, Any]:
        if self.kind == "local":
            return {"kind": "local", "files": [str(f) for f in self.files], "sha256": sha256_paths(self.files)}
        return {"kind": "hub", "id": self.name}


def dataset_location(cfg: DataConfig) -> str:
    return cfg.dataset if cfg.dataset is not None else str(DEMO_DATASET)


def data_paths(cfg: DataConfig) -> list[Path]:
    """The local file or folder the data comes from (none for a hub id): outputs may not land on it."""
    path = Path(dataset_location(cfg)).expanduser()
    return [path] if path.exists() else []


def resolve(cfg: DataConfig, split: str) -> Source | None:
    """Find the file for `split` (None if a local dataset has no such split); hub ids resolve lazily."""
    location = dataset_location(cfg)
    path = Path(location).expanduser()
    if path.is_file():
        # One file serves whichever split is asked for: the user pointed at exactly this data.
        return Source("local", str(path), [path])
    if path.is_dir():
        for ext in LOCAL_FORMATS:
            candidate = path / f"{split}{ext}"
            if candidate.is_file():
                return Source("local", str(path), [candidate])
        return None
    if location.startswith((".", "/", "~")) or Path(location).suffix in LOCAL_FORMATS:
        raise DataError(f"{location}: no such file or folder; pass --data a local folder/file or a hub dataset id")
    return Source("hub", location, [])


def _root_cause(err: BaseException) -> str:
    """The parser's own reason: datasets wraps it (DatasetGenerationError) and logs the cause elsewhere."""
    seen = err
    for _ in range(20):  # bounded: a cycle in the chain must not hang the error path
        inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    text = str(seen).strip().splitlines()[0] if str(seen).strip() else ""
    return f"{type(seen).__name__}: {text}"[:240]


def _load_local(file: Path, delimiter: str | None = None) -> Dataset:
    import datasets

    builder = LOCAL_FORMATS.get(file.suffix)
    if builder is None:
        raise DataError(f"{file}: unsupported format; use one of {', '.join(LOCAL_FORMATS)}")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty; it needs a header row and at least one example")
    if builder in ("csv", "text"):
        with file.open("rb") as f:
            lines = [line for line in (f.readline() for _ in range(2)) if line.strip()]
        if len(lines) < 2 and builder == "csv":
            raise DataError(f"{file}: a header row but no examples")
    kwargs: dict[str, Any] = {}
    if file.suffix == ".tsv" or (delimiter is not None and builder in ("csv", "text")):
        # QUOTE_NONE for TSV: review text is full of quote characters that are not field delimiters.
        builder = "csv"
        kwargs = {"delimiter": delimiter or "\t"}
        if file.suffix == ".tsv":
            kwargs["quoting"] = csv.QUOTE_NONE
    previous = datasets.logging.get_verbosity()
    # datasets logs the parser's failure (with a traceback) before raising: the one-line error below quotes it.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for unreadable files; all mean the same to the user
        cause = _root_cause(err)
        fix = "; save it as UTF-8" if "utf8" in cause.lower().replace("-", "") else ""
        raise DataError(f"{file}: could not read it as {builder} ({cause}){fix}") from None
    finally:
        datasets.logging.set_verbosity(previous)
    return ds


def _delimiter_hint(ds: Dataset) -> str:
    """When a file was read as one column that plainly holds several, say which --delimiter would split it."""
    if len(ds.column_names) != 1 or len(ds) == 0:
        return ""
    sample = [str(v) for v in ds[ds.column_names[0]][:5]]
    for sep in (";", "|", "\t", ","):
        if all(sep in line for line in sample):
            return f"; the file looks {sep!r}-separated: pass --delimiter {sep!r}"
    return ""


def _load_hub(cfg: DataConfig, split: str) -> Dataset:
    import datasets

    from llmzip.progress import quiet_libraries

    quiet_libraries()
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.subset, split=split)
    except Exception as err:  # network, missing split or unknown id: one message with the fix
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{cfg.dataset}: could not load split {split!r} from the Hugging Face hub ({first}); "
            "check the id/--subset, or pass a local folder or file"
        ) from None
    return ds


def load_split(
    cfg: DataConfig,
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    optional: bool = False,
) -> tuple[Dataset, Source] | None:
    """Load one split as a `datasets.Dataset` with checked text/label columns; optionally a seeded subset."""
    source = resolve(cfg, split)
    if source is None:
        if optional:
            return None
        folder = Path(dataset_location(cfg))
        present = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in LOCAL_FORMATS)) or "none"
        raise DataError(
            f"{folder}: no file for split {split!r} (looked for {split}.tsv/.csv/.json/.jsonl/.parquet; "
            f"found: {present}); set the split option to one of them"
        )
    if optional and source.kind == "local" and Path(dataset_location(cfg)).is_file() and split != cfg.train_split:
        return None  # a single file is the training data; do not pretend to evaluate on held-out data
    ds = _load_local(source.files[0], cfg.delimiter) if source.kind == "local" else _load_hub(cfg, split)
    missing = [c for c in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if c and c not in ds.column_names]
    if missing:
        hint = _delimiter_hint(ds) or "; set --text-column/--label-column"
        raise DataError(
            f"{dataset_location(cfg)} ({split}): no column {missing[0]!r} (columns: "
            f"{', '.join(map(str, ds.column_names))}){hint}"
        )
    if len(ds) == 0:
        raise DataError(f"{dataset_location(cfg)} ({split}): a header but no examples; the split is empty")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds, source


def load_text(cfg: DataConfig, split: str) -> tuple[str, dict[str, Any]]:
    """Raw text for a causal LM: a .txt/.raw file read whole, or the text column of any split, joined by newlines."""
    source = resolve(cfg, split)
    if source is None:
        raise DataError(f"{dataset_location(cfg)}: no file for split {split!r}; set the split option")
    if source.kind == "local" and source.files[0].suffix in (".txt", ".raw"):
        try:
            text = source.files[0].read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{source.files[0]}: not UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8"
            ) from None
        if not text.strip():
            raise DataError(f"{source.files[0]}: no text")
        return _capped(text, source.describe())
    loaded = load_split(cfg, split) if source.kind == "local" else (_load_hub(cfg, split), source)
    assert loaded is not None
    ds = loaded[0]
    if cfg.text_column not in ds.column_names:
        raise DataError(
            f"{dataset_location(cfg)} ({split}): no column {cfg.text_column!r} (columns: "
            f"{', '.join(ds.column_names)}); set --text-column"
        )
    parts, total = [], 0
    for value in ds[cfg.text_column]:
        parts.append(str(value or ""))
        total += len(parts[-1]) + 1
        if total > MAX_TEXT_CHARS:
            break
    return _capped("\n".join(parts), source.describe())


def _capped(text: str, described: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(text) <= MAX_TEXT_CHARS:
        return text, described
    return text[:MAX_TEXT_CHARS], {**described, "truncated_at_chars": MAX_TEXT_CHARS}


def label_names(ds: Dataset, cfg: DataConfig) -> list[str]:
    """Class names in id order: ClassLabel names, the sorted set of string labels, or str(0..max) for ints."""
    if len(ds) and isinstance(ds[0][cfg.label_column], list):
        raise DataError(
            f"{cfg.label_column}: each row holds a list of labels (one per word): that is token classification; "
            "pass --task token-classification"
        )
    feature = ds.features[cfg.label_column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = ds.unique(cfg.label_column)
    if any(v is None for v in values):
        raise DataError(f"{cfg.label_column}: some rows have no label; clean the data or pick another column")
    if any(isinstance(v, float) for v in values):
        shown = next(v for v in values if isinstance(v, float))
        raise DataError(
            f"{cfg.label_column}: labels must be integers or strings, found the number {shown!r}; a regression "
            "target is not a classification label"
        )
    if all(isinstance(v, int) for v in values):
        if min(values) < 0:
            raise DataError(f"{cfg.label_column}: integer labels must be >= 0, found {min(values)}")
        return [str(i) for i in range(max(values) + 1)]
    return sorted(str(v) for v in values)


def label_ids(ds: Dataset, cfg: DataConfig, label2id: dict[str, int]) -> list[int]:
    """Labels as ids under the model's mapping; unknown labels fail instead of silently mis-scoring."""
    out = []
    for value in ds[cfg.label_column]:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) not in label2id:
            if 0 <= value < len(label2id):
                out.append(value)
                continue
        key = str(value)
        if key not in label2id:
            raise DataError(f"{cfg.label_column}: label {value!r} is not one the model knows ({', '.join(label2id)})")
        out.append(label2id[key])
    return out


def texts(ds: Dataset, cfg: DataConfig) -> tuple[list[str], list[str] | None]:
    if len(ds) and isinstance(ds[0][cfg.text_column], list):
        raise DataError(
            f"{cfg.text_column}: each row holds a list of words, not a text; for one label per word pass "
            "--task token-classification, else set --text-column to a text column"
        )
    first = [str(t) if t is not None else "" for t in ds[cfg.text_column]]
    second = [str(t) if t is not None else "" for t in ds[cfg.text_pair_column]] if cfg.text_pair_column else None
    return first, second


def encode(
    tokenizer: Any,
    ds: Dataset,
    cfg: DataConfig,
    label2id: dict[str, int] | None,
    *,
    max_length: int,
    padding: bool | str = False,
) -> Dataset:
    """Tokenize (and map labels) into a torch-ready dataset with input_ids/attention_mask[/labels]."""
    first, second = texts(ds, cfg)
    enc = tokenizer(first, second, truncation=True, max_length=max_length, padding=padding)
    columns: dict[str, Any] = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if label2id is not None:
        columns["labels"] = label_ids(ds, cfg, label2id)
    from datasets import Dataset as HFDataset

    return HFDataset.from_dict(columns)


def token_windows(tokenizer: Any, text: str, length: int, skip: int = 0) -> list[list[int]]:
    """The text's token ids (after the first `skip`) cut into non-overlapping windows of `length` (a shorter tail
    is dropped)."""
    ids = tokenizer(text, add_special_tokens=True).input_ids[skip:]
    return [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
