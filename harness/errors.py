"""The one exception type the command line turns into a one-line message."""


class HarnessError(Exception):
    """A user-facing problem (bad checkpoint, bad audio, bad arguments).

    The CLI prints ``error: <message>`` and exits non-zero without a traceback, so
    the message must name the problem and the file it concerns.
    """
