"""The `llmzip` command line: one module per group of verbs; each parses flags (or a YAML recipe section), calls one
stage function and prints a summary. Importing this package must stay light: `llmzip --help` answers instantly.
"""

from __future__ import annotations

from llmzip.cli import lm, model, report, search, train
from llmzip.cli.common import app

__all__ = ["app", "main"]

# Registered here, in pipeline order, so `llmzip --help` reads as the chain it runs.
app.command("import")(lm.import_model)
for _command in (
    train.finetune,
    train.distill,
    model.calibrate,
    model.quantize,
    model.export,
    report.bench,
    report.run,
    search.compress,
    lm.generate,
):
    app.command()(_command)


def main() -> None:
    app()
