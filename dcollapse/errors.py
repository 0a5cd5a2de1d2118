"""Errors the CLI turns into exit codes: bad input -> 2, a failed check -> 1."""


class UserError(Exception):
    """Bad usage or bad input. The message is one line naming the file/row/field and what was expected."""


class CheckFailed(Exception):
    """A requested check (e.g. ``--fail-under-ia``) did not pass. The message is the one-line reason."""


class Notice(UserWarning):
    """Something the user should know that is not an error (e.g. leftovers of a killed run were cleaned up); the
    CLI prints it as one line."""
