"""The one exception type users see: a message naming the problem and the fix."""


class ModelpressError(Exception):
    """Bad input or a failed check, explained for the person who has to fix it."""
