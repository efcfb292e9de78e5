"""The one exception family the CLI turns into a one-line message and a non-zero exit."""


class TritonkitError(Exception):
    """A user-facing failure: `message` says what went wrong, `hint` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(TritonkitError):
    """Bad input from the user: unknown names, invalid flags, missing files."""

    exit_code = 2


class DoesNotFitError(TritonkitError):
    """The model cannot be served on the chosen hardware; `hint` lists what would work."""

    exit_code = 3


class ServerError(TritonkitError):
    """The server could not start, died, or stopped answering."""

    exit_code = 4


class Interrupted(TritonkitError):
    """Ctrl-C: partial results were kept."""

    exit_code = 130
