"""Help pages that read the same in a wide terminal, at 80 columns and piped: every name whole, flags as flags.

Typer's rich help lays each option out in seven columns (required mark, long and short names, their
negative forms, value type, help). A command with many options does not fit 80 columns that way, and
rich then cuts option names and words with "…"; it also shows every flag with a ``<bool>`` value it
does not take, and required arguments as ``{MODEL}``. The command classes here render the same
content in two columns instead: the option's names with its value (``--steps, -T INT``, flags bare,
``--amp / --no-amp``), then its help, which wraps (a word longer than the column folds, never cut).
A name too long for the first column puts its help on the next line. Usage lines read ``MODEL`` for a
required argument and ``[MODEL]`` for an optional one.
"""

from __future__ import annotations

import inspect
from enum import Enum

import typer
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

NAME_COLUMN_MAX = 30  # a longer name (with its value) gets a line of its own, its help below it
# Value names by the type name Typer (or click) reports.
VALUE_NAMES = {"int": "INT", "integer": "INT", "float": "FLOAT", "str": "TEXT", "text": "TEXT", "path": "PATH"}


def _console() -> Console:
    """A console on the current stdout (the width from the terminal, $COLUMNS, or 80 when piped)."""
    return Console(highlight=False)


def _markup(text: str, style: str = "") -> Text:
    """Help text in rich markup, paragraphs kept, single line breaks joined, anything after \\f dropped."""
    text = inspect.cleandoc(text).partition("\f")[0]
    paragraphs = [paragraph.replace("\n", " ").strip() for paragraph in text.split("\n\n")]
    return Text.from_markup("\n\n".join(paragraphs), style=style)


def _choices(param) -> list[str]:
    descriptor = getattr(param, "type_descriptor", None)  # Typer's own parameters
    choices = getattr(descriptor, "choices", None) if getattr(descriptor, "is_choice", False) else None
    if choices is None:
        choices = getattr(getattr(param, "type", None), "choices", None)  # click's Choice (Typer on click)
    return [str(c.value if isinstance(c, Enum) else c) for c in choices or ()]


def _value_name(param, ctx) -> str:
    """What follows the option's name: nothing for a flag, the metavar, the choices, or the type (INT, PATH...)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return param.metavar
    choices = _choices(param)
    if choices:
        return "{" + "|".join(choices) + "}"
    if hasattr(param, "display_type"):  # Typer's own parameters: "<int range>", "<path>"
        type_name = param.display_type(ctx).strip("<>").removesuffix(" range")
    else:
        type_name = getattr(getattr(param, "type", None), "name", "value").removesuffix(" range")
    value = VALUE_NAMES.get(type_name.lower(), type_name.upper())
    return value + ("..." if param.nargs != 1 or getattr(param, "multiple", False) else "")


def _names(param, ctx) -> Text:
    """``--data, -d PATH``, ``--amp / --no-amp``, ``--json``; an argument by its metavar (``MODEL``)."""
    if param.param_type_name == "argument":
        return Text(param.metavar or param.name.upper(), style="bold cyan")
    longest_first = sorted(param.opts, key=lambda opt: not opt.startswith("--"))
    text = Text(", ".join(longest_first), style="bold cyan")
    if param.secondary_opts:
        text.append(" / ").append(", ".join(param.secondary_opts), style="bold magenta")
    value = _value_name(param, ctx)
    if value:
        text.append(" ").append(value, style="yellow")
    return text


def _default_text(param) -> str | None:
    """The default as the user would type it, or None when the option does not show one."""
    default = param.default
    if not getattr(param, "show_default", False) or default is None or callable(default):
        return None
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return (param.opts if default else param.secondary_opts)[0]
        return None  # a plain flag is off unless given
    if isinstance(default, (list, tuple)):
        return ", ".join(str(v.value if isinstance(v, Enum) else v) for v in default) or None
    return str(default.value if isinstance(default, Enum) else default)


def _range_text(param) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    if high is None:
        return f"x>={low}"
    return f"x<={high}" if low is None else f"{low}<=x<={high}"


def _help(param) -> Text:
    """The help text, then its notes: default, range, environment variable, required."""
    text = _markup(param.help or "")
    notes = []
    default = _default_text(param)
    if default is not None:
        notes.append(f"default: {default}")
    if _range_text(param):
        notes.append(_range_text(param))
    envvar = param.envvar if getattr(param, "show_envvar", False) else None
    if envvar:
        notes.append(f"env var: {envvar if isinstance(envvar, str) else ', '.join(envvar)}")
    if notes:
        text.append(("  " if text.plain else "") + f"[{'; '.join(notes)}]", style="dim")
    if param.required:
        text.append(("  " if text.plain else "") + "[required]", style="dim red")
    return text


def _row(name: Text | str, help_text: Text, name_width: int) -> Table:
    row = Table.grid(padding=(0, 2), expand=True)
    row.add_column(width=name_width, no_wrap=True)
    row.add_column(overflow="fold", ratio=1)
    row.add_row(name, help_text)
    return row


def _parameters_panel(title: str, params, ctx, width: int) -> Panel | None:
    """Names with their value beside the help; a name too long for the first column stands on its own line."""
    if not params:
        return None
    names = [_names(param, ctx) for param in params]
    name_width = min(NAME_COLUMN_MAX, max(len(text.plain) for text in names), max(10, width // 3))
    rows = []
    for name, param in zip(names, params):
        if len(name.plain) > name_width:
            rows += [name, _row("", _help(param), name_width)]
        else:
            rows.append(_row(name, _help(param), name_width))
    return Panel(Group(*rows), title=title, title_align="left", border_style="dim")


def _commands_panel(group, ctx) -> Panel | None:
    commands = [group.get_command(ctx, name) for name in group.list_commands(ctx)]
    commands = [command for command in commands if command is not None and not command.hidden]
    if not commands:
        return None
    name_width = max(len(command.name) for command in commands)
    rows = [
        _row(
            Text(command.name, style="bold cyan"),
            _markup((command.short_help or command.help or "").split("\n\n")[0]),
            name_width,
        )
        for command in commands
    ]
    return Panel(Group(*rows), title="Commands", title_align="left", border_style="dim")


def render_help(command, ctx) -> None:
    """The whole help page of a command or of the app: usage, help text, parameters, commands, epilog."""
    console = _console()
    console.print(Padding(Text(command.get_usage(ctx).strip(), style="bold"), (1, 1)))
    if command.help:
        first, _, rest = inspect.cleandoc(command.help).partition("\f")[0].partition("\n\n")
        console.print(Padding(_markup(first), (0, 1)))
        if rest.strip():
            console.print(Padding(_markup(rest, style="dim"), (1, 1, 0, 1)))
        console.print()
    params = [param for param in command.get_params(ctx) if not getattr(param, "hidden", False)]
    panels = [
        _parameters_panel("Arguments", [p for p in params if p.param_type_name == "argument"], ctx, console.width),
        _parameters_panel("Options", [p for p in params if p.param_type_name == "option"], ctx, console.width),
    ]
    if isinstance(command, TyperGroup):
        panels.append(_commands_panel(command, ctx))
    for panel in panels:
        if panel is not None:
            console.print(panel)
    if command.epilog:
        console.print(Padding(_markup(command.epilog), (1, 1)))


class Command(TyperCommand):
    """A Typer command with help rendered by :func:`render_help` and arguments in usage as ``MODEL``/``[MODEL]``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_help(self, ctx, formatter) -> None:
        render_help(self, ctx)


class CommandGroup(TyperGroup):
    """The app's group: its help rendered by :func:`render_help`, with the commands listed."""

    def format_help(self, ctx, formatter) -> None:
        render_help(self, ctx)


class Typer(typer.Typer):
    """``typer.Typer`` whose group and commands are :class:`CommandGroup` and :class:`Command` unless told otherwise."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cls", CommandGroup)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs):
        kwargs["cls"] = kwargs.get("cls") or Command
        return super().command(name, **kwargs)
