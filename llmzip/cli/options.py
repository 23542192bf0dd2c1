"""Command-line options derived from the stage config classes: one definition per option.

Every field of a stage's config (and of its `data`) that carries a `Flag` (llmzip/config/flags.py) becomes one
Typer option: the flag is `--field-name` unless the field says otherwise, the type is the field's (enums stay
enums, so --help lists the choices, and a list field is comma-separated text or a repeatable option), the help is
the field's, with its default. Every generated option defaults to None, "not set", so a YAML recipe's value is only
overridden by flags the user typed (`_build` in llmzip/cli/common.py); the defaults themselves live in the config
classes and nowhere else.

Why by hand and not a library: Typer builds parameters from a function's signature, so a verb's signature is
assembled here (`inspect.Signature` + matching `__annotations__`) from its own arguments and the config's fields.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from llmzip import config as cfg
from llmzip.config.flags import Flag, default_of, flag_of

DATA_PANEL = "Data"


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One generated option: the Python parameter name and where its value goes in the stage's config."""

    param: str
    path: tuple[str, ...]  # ("learning_rate",) or ("data", "dataset")
    annotation: Any


def _bare(annotation: Any) -> Any:
    """`int | None` → int; other types unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _option_type(annotation: Any, flag: Flag) -> Any:
    """The Python type Typer parses an option as (always optional: None means "not set")."""
    bare = _bare(annotation)
    if typing.get_origin(bare) is list:
        return Optional[list[str]] if flag.repeat else Optional[str]  # comma lists become lists in llmzip/recipe.py
    return Optional[bare]


def _help(f: dataclasses.Field[Any], flag: Flag, bare: Any) -> str:
    if flag.default_text is not None:
        return f"{flag.help} (default: {flag.default_text})" if flag.default_text else flag.help
    default = default_of(f)
    if default is None or default == [] or (bare is bool and not flag.decls):
        return flag.help
    if bare is bool and len(flag.decls) == 1 and "/" not in flag.decls[0]:
        return flag.help if not default else f"{flag.help} (default: on)"
    return f"{flag.help} (default: {_shown(default)})"


def _options(config_cls: type, prefix: tuple[str, ...], panel: str | None, skip: tuple[str, ...]) -> list[ConfigOption]:
    hints = typing.get_type_hints(config_cls)
    out: list[ConfigOption] = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):  # the stage's data: its own fields, in the Data panel
            unused = getattr(config_cls, "UNUSED_DATA", ())
            out += _options(hints[f.name], (*prefix, f.name), DATA_PANEL, unused)
            continue
        flag = flag_of(f)
        if flag is None or not flag.cli:
            continue
        bare = _bare(hints[f.name])
        decls = flag.decls or (f"--{f.name.replace('_', '-')}",)
        info = typer.Option(*decls, help=_help(f, flag, bare), rich_help_panel=flag.panel or panel)
        annotation = Annotated[_option_type(hints[f.name], flag), info]  # type: ignore[valid-type]
        out.append(ConfigOption(f.name, (*prefix, f.name), annotation))
    return out


def config_options(stage: str) -> list[ConfigOption]:
    """The options of a stage verb, in the config's field order (data fields where `data` is declared)."""
    return _options(cfg.STAGE_CONFIGS[stage], (), None, ())


def stage_options(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a verb one option per config field of `stage`.

    The verb is written with its own parameters (arguments, --out, --recipe, --overwrite, --json ...) and a final
    `flags: dict` parameter; the command Typer sees has the verb's parameters, then the generated options, and
    calls the verb with `flags` = {path in the config: value} for every option the user set.
    """

    def wrap(verb: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for name, p in inspect.signature(verb, eval_str=True).parameters.items() if name != "flags"]
        hints = typing.get_type_hints(verb, include_extras=True)
        generated = config_options(stage)
        clash = {o.param for o in generated} & {p.name for p in own}
        assert not clash, f"{verb.__name__}: parameters {clash} shadow config options"

        def command(**kwargs: Any) -> Any:
            values = {o.path: kwargs.pop(o.param, None) for o in generated}
            return verb(**kwargs, flags={path: v for path, v in values.items() if v is not None})

        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
        params += [
            inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation)
            for o in generated
        ]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = verb.__name__, verb.__doc__
        command.__wrapped_verb__ = verb  # type: ignore[attr-defined]
        return command

    return wrap
