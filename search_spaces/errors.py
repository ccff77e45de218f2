"""Errors for bad user input. The CLI prints their message and exits with code 2."""


class HwnasError(ValueError):
    """Bad input: the message says what was wrong and what is allowed."""


class ArchError(HwnasError):
    """An architecture (string, JSON or object) that is malformed or breaks a family's rules."""


class SpaceError(HwnasError):
    """An architecture outside a search space, an unknown space, or a malformed space definition."""
