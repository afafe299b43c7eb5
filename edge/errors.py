"""Errors the edge reports to a person: a clear message and an exit status, never a traceback."""

# Exit statuses of ppfr-edge.
EXIT_OK = 0
EXIT_SERVER = 1  # server or network problem (unreachable, rejected request, unknown subject)
EXIT_INPUT = 2  # a photo or argument problem (unreadable, no face, several faces, bad bundle)


class EdgeError(Exception):
    """A failure with a message meant for a person and the exit status it maps to."""

    exit_status = EXIT_INPUT

    def __init__(self, message: str, exit_status: int | None = None):
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class ImageError(EdgeError):
    """The photo cannot be used: unreadable, no face, several faces, wrong size for --aligned."""

    exit_status = EXIT_INPUT


class ServerError(EdgeError):
    """The server could not be reached or answered with an error status."""

    exit_status = EXIT_SERVER

    def __init__(self, message: str, code: str = "", fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.fatal = fatal  # no point trying the remaining images (server down, bad credentials)
