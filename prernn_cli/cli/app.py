"""The Typer app, its main callback, and what every command shares: the consoles and the error handler.

Library errors (:class:`~prernn_cli.errors.PrernnError`) become one line on stderr and the
error's exit code; nothing else is caught, so a real bug still shows its traceback. With
``--debug`` (or ``PRERNN_DEBUG=1``) a library error shows its traceback too. A usage error
(an unknown option, a number out of its range) is one line too, with exit code 2.

Text that comes from a file or the command line (class and layer names, paths, architecture
names, error messages) is printed through :func:`literal` (or :func:`visible` where markup is
off): rich markup in it is shown as typed and control characters (ESC among them) as visible
escapes, so a file cannot restyle or clear the terminal.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from prernn_cli import __version__
from prernn_cli.cli.help import CommandGroup, Typer
from prernn_cli.errors import PrernnError
from prernn_cli.files import finite_json

# C0 and C1 controls (ESC, BEL, CR, ...), DEL, and the bidirectional overrides that reorder what is shown
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: object) -> str:
    """``text`` with every control character written as a visible escape (``\\x1b``, ``\\n``): one inert line."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), str(text))


def literal(text: object) -> str:
    """``text`` to embed in rich markup, printed exactly as it is: markup escaped, control characters visible."""
    return escape(visible(text))


class _VisibleFormatter(logging.Formatter):
    """Log lines with control characters from file names and contents made visible."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))


def _usage_error(error: typer.TyperException) -> None:
    """A usage error (bad option, value out of range) as one line on stderr, then exit with its code."""
    if type(error).__name__ == "NoArgsIsHelpError":  # the help was asked for by giving no arguments
        raise error
    context = getattr(error, "ctx", None)
    hint = f" (see '{context.command_path} --help')" if context is not None else ""
    stderr.print(f"[bold red]error:[/] {literal(error.format_message())}{literal(hint)}", soft_wrap=True)
    raise typer.Exit(code=error.exit_code)


class _OneLineUsageErrors(CommandGroup):
    """The app's group: usage errors of the group and of every command are printed as one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except typer.TyperException as error:
            _usage_error(error)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.TyperException as error:
            _usage_error(error)


app = Typer(
    cls=_OneLineUsageErrors,
    name="prernn",
    help="Make pretrained CNNs recurrent (PreRNN, CVPR 2018): inspect, convert, train, export.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


@dataclass
class Settings:
    """What the main callback decides for the whole invocation."""

    debug: bool = False  # re-raise library errors so their traceback shows


settings = Settings()


def _fail(error: PrernnError) -> None:
    message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    stderr.print(f"[bold red]error:[/] {literal(message)}", soft_wrap=True)
    raise typer.Exit(code=error.exit_code)


def handles_errors(command: Callable) -> Callable:
    """Turn known library errors into one line on stderr and their exit code (re-raised with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PrernnError as error:
            if settings.debug:
                raise
            _fail(error)

    return wrapper


def print_json(document) -> None:
    """Print one JSON document on stdout, nothing else."""
    sys.stdout.write(finite_json(document, indent=2, sort_keys=False, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"prernn {__version__}")
        raise typer.Exit()


VersionOption = Annotated[
    bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details on stderr.")]
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        envvar="PRERNN_DEBUG",
        help="Show the traceback of an error instead of its one-line message.",
    ),
]


@app.callback()
def main(version: VersionOption = False, verbose: VerboseOption = False, debug: DebugOption = False) -> None:
    """Make pretrained CNNs recurrent (PreRNN, CVPR 2018).

    Typical flow: [bold]inspect[/] a checkpoint, [bold]convert[/] a layer into a Pre-cell,
    [bold]train[/] on a folder of clips, [bold]export[/] to ONNX and [bold]stream[/] a video.
    """
    settings.debug = debug
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
