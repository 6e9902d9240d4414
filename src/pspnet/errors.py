"""One exception type for problems the user can fix; the CLI prints it without a traceback."""


class PSPNetError(Exception):
    """Bad input, a missing file or an impossible request: the message names the file and the problem."""
