"""User-facing errors: one clear line (what, where, how to fix), never a traceback."""


class LnaError(Exception):
    """A mistake in the user's input or environment; the CLI prints it as one line."""
