"""One definition per option: a config field carries its command-line help (and, where it differs from
`--field-name`, its flag), so the CLI (llmzip/cli/options.py) and the recipe reader (llmzip/recipe.py) are both
derived from the config classes and cannot drift apart.

Pure Python, like the rest of llmzip/config: `llmzip --help` must not pay for torch, and Typer is not imported
here either (the config layer does not know about the command line's library, only what it should say).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    """What the command line says about one config field."""

    help: str
    # Typer's declarations when they are not plain `--field-name` (booleans: "--on/--off" or just "--on").
    decls: tuple[str, ...] = ()
    panel: str | None = None  # the --help section
    # A list field given as one repeatable option (`--exclude A --exclude B`) rather than comma-separated text.
    repeat: bool = False
    # How --help states the default when the value alone would mislead ("" = say nothing).
    default_text: str | None = None
    # False: a recipe-only field (e.g. a tolerance tuned by the stage's own tests), no flag.
    cli: bool = True


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | tuple[str, ...] = (),
    panel: str | None = None,
    factory: Any = MISSING,
    repeat: bool = False,
    default_text: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its command-line help: `x: int = option(8, help="…")`."""
    decls = (flag,) if isinstance(flag, str) else tuple(flag)
    meta = {"flag": Flag(help=help, decls=decls, panel=panel, repeat=repeat, default_text=default_text, cli=cli)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field[Any]) -> Flag | None:
    """The command-line side of a config field (None: a field that was declared without `option`)."""
    return f.metadata.get("flag")


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (calling its factory)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default
