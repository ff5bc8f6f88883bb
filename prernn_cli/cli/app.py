"""The Typer app, its main callback, and what every command shares: the consoles and the error handler.

Library errors (:class:`~prernn_cli.errors.PrernnError`) become one line on stderr and the
error's exit code; nothing else is caught, so a real bug still shows its traceback. With
``--debug`` (or ``PRERNN_DEBUG=1``) a library error shows its traceback too.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from prernn_cli import __version__
from prernn_cli.errors import PrernnError

app = typer.Typer(
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
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)
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
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


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
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
