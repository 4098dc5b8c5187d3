"""User-facing faults.

Anything a user can cause with a bad file, flag or environment is raised as
:class:`FerNasError` with a one-line message naming the file/row/image and the
fault. The command-line wrapper (:func:`nas.runtime.cli.run`) prints it and exits with
status 2; library callers can catch it.
"""


class FerNasError(Exception):
    """A fault in the user's input or environment; the message is one line."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the promise of one line even when a message embeds a path or an
        # exception text that spans several.
        super().__init__(" ".join(str(message).split()))


class RunInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the run has saved its state."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
