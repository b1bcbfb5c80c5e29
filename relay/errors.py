"""relay's own errors. The HTTP edge (relay/api/errors.py) turns them into responses;
anything else that escapes a handler is logged and answered with a bare 500."""

from __future__ import annotations

from collections.abc import Sequence


class RelayError(Exception):
    """Something went wrong in relay."""

    status = 500

    def __init__(self, message: str | None = None, *, data: object = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.data = data
        super().__init__(self.message)


class ValidationFailed(RelayError):
    """validation error"""

    status = 422

    def __init__(self, problems: Sequence[str], message: str | None = None) -> None:
        # The problems go in the message too: some SDK error types keep only the message.
        default = "validation error: " + "; ".join(problems) if problems else None
        super().__init__(message or default or "validation error", data=list(problems))
        self.problems = list(problems)


class NotFound(RelayError):
    """not found"""

    status = 404


class Conflict(RelayError):
    """conflict"""

    status = 409


class BadRequest(RelayError):
    """bad request"""

    status = 400


class Unauthorized(RelayError):
    """unauthorized"""

    status = 401


class Forbidden(RelayError):
    """forbidden"""

    status = 403


class DatabaseUnavailable(RelayError):
    """the database is unavailable; retry shortly"""

    status = 503
