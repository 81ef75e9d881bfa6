"""The one exception the command line turns into a one-line error (``ranksweep: error: …``, exit 2)."""


class UserError(Exception):
    """A mistake in the user's input, reported as one line and exit status 2; the message names the bad
    value and what would be valid (``sweep.cli.run_cli`` prints it)."""
