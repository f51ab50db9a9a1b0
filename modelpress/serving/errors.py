"""The server's error types, and the one place an exception becomes a status.

Every transport answers with the same status and message: `RequestError.status` is an HTTP
status (the REST transport sends it as is; another transport maps it to its own codes), and
`answer` turns anything else into the 500 an unexpected failure gets.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be answered with a result: `status` and {"error": message}."""

    default_status = 500

    def __init__(self, message: str, status: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = self.default_status if status is None else status
        self.headers = headers or {}


class ClientError(RequestError):
    """A mistake in the request: answered 4xx (400 unless said otherwise)."""

    default_status = 400


class ServerError(RequestError):
    """Not the client's fault: answered 5xx (500 unless said otherwise; overload 503, timeout 504)."""


class SchedulerClosed(Exception):
    """The version was retired between lookup and submit: look the model up again."""


def answer(exc: BaseException) -> tuple[int, str, dict]:
    """(status, message, headers) for any exception a request raised."""
    if isinstance(exc, RequestError):
        return exc.status, str(exc), exc.headers
    return 500, f"internal error: {type(exc).__name__}: {exc}", {}
