"""Errors the user can fix; the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input (a missing run directory, a missing dataset choice, …)."""
