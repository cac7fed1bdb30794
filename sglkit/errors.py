"""The one error type that tasks turn into a one-line message and an exit status."""


class SglkitError(Exception):
    """A problem the user can fix; the message is one line and names the field or flag."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(SglkitError):
    """Bad input: a profile field, a flag, a file. Exit status 2, like argparse."""

    exit_code = 2
