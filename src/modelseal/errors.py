"""Errors that the CLI turns into exit code 2 with one line on stderr."""


class InputError(Exception):
    """Bad input from the user: says what is wrong and how to fix it.

    The CLI prints ``str(err)`` as one line and exits with code 2.
    """

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(f"{what} (fix: {fix})" if fix else what)
