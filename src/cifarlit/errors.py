"""The one exception type for user mistakes: the CLI prints its message as a sentence, without a traceback."""


class CifarlitError(ValueError):
    """A bad option value or bad data; the message names the option or file, the value and what would be valid."""
