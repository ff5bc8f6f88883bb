"""The ``prernn`` command line: the Typer app, with every command module imported so that it registers.

Only this package imports typer and renders with rich. A command module imports at its top only what
its options are declared with (the library's enums); the rest it imports inside the command, which
keeps ``--help`` from loading what the command does not need.
"""

# --help lists the commands in the order their modules register them: the order of the data flow.
# isort: off
from prernn_cli.cli import inspect, params, convert, train, evaluate, fuse, export, stream, analyze  # noqa: F401

# isort: on
from prernn_cli.cli.app import app

__all__ = ["app"]
