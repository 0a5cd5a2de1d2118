"""Running a command as data-parallel ranks: ``--nproc N`` relaunches the current command line under
torch.distributed's elastic launcher (what ``torchrun --standalone --nproc-per-node N -m dcollapse ...`` runs),
and each rank records its own failure where the launcher reads it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from dcollapse.cli.common import err
from dcollapse.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def command_line(ctx: typer.Context, drop: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The arguments that reproduce the command of ``ctx`` (its subcommand path and every parameter given a
    value other than its default), without the parameters named in ``drop``."""
    path, node = [], ctx
    while node.parent is not None:  # the subcommand names below the root (the program name)
        path.insert(0, node.info_name)
        node = node.parent
    args = path
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or value == param.default:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def relaunch(ctx: typer.Context, nproc: int) -> None:
    """Run the command of ``ctx`` again as ``nproc`` ranks on this machine; a failed rank ends this process with
    its exit code after one line naming it."""
    from dcollapse.distributed import RanksFailed, launch, world_size

    if world_size() > 1:
        raise UserError("--nproc starts the ranks itself; under torchrun leave it out (use --nproc-per-node)")
    command = [sys.executable, "-m", "dcollapse", *command_line(ctx)]
    try:
        launch(nproc, command)
    except RanksFailed as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exitcode) from None


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
