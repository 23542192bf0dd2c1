"""`python -m llmzip` entry point (also what `torchrun -m llmzip` runs)."""

from __future__ import annotations

from llmzip.cli import main

if __name__ == "__main__":
    main()
