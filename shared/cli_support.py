"""What both command-line tools share: error handling, consoles and progress bars.

Heavy libraries (numpy, torch, MONAI, Flower) are imported inside commands, never here, so
``--help`` answers at once.

Text that carries data (paths, messages, header strings) is printed with rich markup off or
escaped: a ``[study]`` in a message must print as itself, not vanish as a style tag.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shared.errors import EXIT_INTERNAL, ToolkitError, from_os_error
from shared.progress_log import ProgressLog

P = ParamSpec("P")
R = TypeVar("R")

out = Console()  # results (tables, JSON) go to stdout
err = Console(stderr=True)  # progress, warnings and errors go to stderr


class State:
    debug = False


class ToolkitTyper(typer.Typer):
    """A Typer app whose every command runs through ``handle_errors``: registering a command
    is enough, so no command can miss the handler (one did: issue 11)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[P, R]) -> Callable[P, R]:
            register(handle_errors(fn))
            return fn

        return decorator


def make_group(help_text: str) -> typer.Typer:
    """A subcommand group (``keys``, ``export``, ``trust``, ...) with the same guarantees."""
    return ToolkitTyper(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def make_app(name: str, help_text: str) -> typer.Typer:
    app = ToolkitTyper(
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


def print_error(exc: ToolkitError) -> None:
    """One red line (plus one hint line): the whole of what a user sees of an error."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False, soft_wrap=True)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn toolkit errors into one red line and their exit code; permission, disk-full and
    wrong-path OSErrors into a bad-input line (exit 3) with what to do; anything else into an
    'internal error' line (exit 1) unless --debug asks for the traceback. Idempotent."""
    if getattr(fn, "__handles_errors__", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ToolkitError as exc:
            if State.debug:
                raise
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, click.ClickException):
            raise
        except Exception as exc:
            if State.debug:
                raise
            known = from_os_error(exc) if isinstance(exc, OSError) else None
            if known is not None:
                print_error(known)
                raise typer.Exit(known.exit_code) from None
            err.print(
                f"[bold red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')} "
                "(rerun with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    wrapper.__handles_errors__ = True  # type: ignore[attr-defined]
    return wrapper


def stderr_is_terminal() -> bool:
    """Whether a person watches stderr (a terminal) rather than a journal or a log file."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    enabled: bool = True,
    start: int = 0,
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with ETA on stderr, or plain timestamped lines when stderr is not a
    terminal (a service manager's journal, a log file); yields ``advance(n)``. ``start`` steps
    were done before (a resumed run): shown as done, left out of the rate and the ETA."""
    if not enabled:
        yield lambda n=1: None
        return
    if not stderr_is_terminal():
        log, done = ProgressLog(), [start]
        # the stage's clock starts now, not at its first step
        log.update(description, start, total, resumed=start > 0)

        def advance(n: int = 1) -> None:
            done[0] += n
            log.update(description, done[0], total)

        yield advance
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
        task = prog.add_task(description, total=total, completed=start)
        yield lambda n=1: prog.advance(task, n)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
