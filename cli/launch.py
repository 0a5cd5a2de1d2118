"""Running a command as data-parallel ranks: ``--nproc N`` relaunches the current command line under
torch.distributed's elastic launcher (what ``torchrun --standalone --nproc-per-node N -m dcollapse ...`` runs),
and each rank records its own failure where the launcher reads it."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from dcollapse.cli.common import say
from dcollapse.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
LOCK_HELD = "DCOLLAPSE_OUTPUT_LOCKED"  # set for the ranks a --nproc run starts


def command_line(ctx: typer.Context, drop: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The arguments that reproduce the command of ``ctx`` (its subcommand path and every parameter given a
    value other than its default), without the parameters named in ``drop``.

    Option values are joined to their option (``--out=PATH``) and the positional arguments come after ``--``, so a
    value that looks like an option (a folder named ``--epochs=1``) stays a value."""
    path, node = [], ctx
    while node.parent is not None:  # the subcommand names below the root (the program name)
        path.insert(0, node.info_name)
        node = node.parent
    options, arguments = [], []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or value == param.default:
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            arguments += [str(v) for v in values]
        elif getattr(param, "is_flag", False):
            options.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            options += [f"{param.opts[0]}={v}" for v in values]
    return [*path, *options, "--", *arguments]


def hold_output(ctx: typer.Context, path: Path) -> None:
    """Lock the output ``path`` until the command ends (:func:`dcollapse.io.output_lock`: a second run writing the
    same path is refused, and an unwritable place fails now rather than after the first epoch). The ranks of a
    ``--nproc`` run write under the lock of the process that started them; under torchrun rank 0 takes it."""
    from dcollapse.io import output_lock

    if os.environ.get(LOCK_HELD) or int(os.environ.get("RANK", "0")) != 0:
        return
    ctx.with_resource(output_lock(path))


def relaunch(ctx: typer.Context, nproc: int) -> None:
    """Run the command of ``ctx`` again as ``nproc`` ranks on this machine; a failed rank ends this process with
    its exit code after one line naming it."""
    from dcollapse.distributed import RanksFailed, launch, world_size

    if world_size() > 1:
        raise UserError("--nproc starts the ranks itself; under torchrun leave it out (use --nproc-per-node)")
    command = [sys.executable, "-m", "dcollapse", *command_line(ctx)]
    os.environ[LOCK_HELD] = "1"  # the ranks inherit it: this process holds the output's lock
    try:
        launch(nproc, command)
    except RanksFailed as exc:
        say("error:", str(exc))
        raise typer.Exit(exc.exitcode) from None
    finally:
        del os.environ[LOCK_HELD]


def records_rank_failures(fn: F) -> F:
    """Let the launcher know why this rank failed (any exception but a lost connection), then re-raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            from dcollapse.distributed import record_failure

            record_failure(exc)
            raise

    return wrapper  # type: ignore[return-value]
