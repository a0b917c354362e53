"""What both command-line tools share: error handling, consoles and progress bars.

Heavy libraries (numpy, torch, MONAI, Flower) are imported inside commands, never here, so
``--help`` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shared.errors import EXIT_INTERNAL, ToolkitError

P = ParamSpec("P")
R = TypeVar("R")

out = Console()  # results (tables, JSON) go to stdout
err = Console(stderr=True)  # progress, warnings and errors go to stderr


class State:
    debug = False


def make_app(name: str, help_text: str) -> typer.Typer:
    app = typer.Typer(
        name=name,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,  # never dump locals (PHI) in a traceback
        rich_markup_mode=None,  # plain click help: paragraphs are re-wrapped
    )

    @app.callback()
    def _main(
        debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    ) -> None:
        State.debug = debug

    return app


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn toolkit errors into one red line and their exit code; anything else into an
    'internal error' line (exit 1) unless --debug asks for the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ToolkitError as exc:
            if State.debug:
                raise
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"[dim]hint: {exc.hint}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if State.debug:
                raise
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                "(rerun with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    enabled: bool = True,
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with ETA on stderr; yields ``advance(n)``."""
    if not enabled or (not sys.stderr.isatty() and total is None):
        yield lambda n=1: None
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not enabled,
    )
    with prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
