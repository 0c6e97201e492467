"""The error every checkpoint loader raises: detection state that this version cannot load.

A checkpoint (the alert book's, a detector's, the canary's) is data checked field by field on load, never
code; whichever part of it is wrong, the caller catches one exception. It lives apart from the alert book so
that a detector, which knows nothing of alerts, can raise it.

>>> issubclass(StateFormatError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["StateFormatError"]


class StateFormatError(ValueError):
    """A detector checkpoint that is not in a format this version can load."""
