"""The one exception tree: the CLI catches LlmzipError, prints one line and exits non-zero."""

from __future__ import annotations


class LlmzipError(Exception):
    """A failure the user can fix; its message is one line that names the fix."""

    exit_code = 1


class ConfigError(LlmzipError):
    """A bad recipe, flag or config value."""

    exit_code = 2


class ArtifactError(LlmzipError):
    """An input directory that is missing, of the wrong stage, or would be overwritten."""

    exit_code = 3


class DataError(LlmzipError):
    """A dataset that cannot be found, read, or lacks the needed columns."""

    exit_code = 4


class ModelError(LlmzipError):
    """A model that cannot be loaded or does not fit the operation asked of it."""

    exit_code = 5


class ExportError(LlmzipError):
    """An ONNX export that failed or did not match PyTorch."""

    exit_code = 6


class ProviderError(LlmzipError):
    """An execution provider that this onnxruntime build does not have."""

    exit_code = 7


class GateError(LlmzipError):
    """A CI gate (`--min-speedup`, `--max-accuracy-drop`) that the candidate did not pass."""

    exit_code = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every stage cleans up its temporary output the same way."""
