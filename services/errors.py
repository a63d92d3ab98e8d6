"""Typed request errors and their HTTP mapping.

Every error a request can meet is one of these. Messages are written for the caller and must
never contain patient identifiers (names, IDs, dates) or internal details (paths, tracebacks).
"""

from __future__ import annotations

# Exceptions that ask the process (or a closing generator) to stop: no handler of this service
# swallows them. Everything else a third-party library raises, pyo3's PanicException (a
# BaseException) included, becomes one of the typed errors below.
PROCESS_EXITS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


def reraise_process_exit(error: BaseException) -> None:
    """Re-raise ``error`` when it is one of PROCESS_EXITS; return otherwise."""
    if isinstance(error, PROCESS_EXITS):
        raise error


class MedsegError(Exception):
    """Base class: an error with an HTTP status and a stable machine-readable code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, str]:
        """The JSON body sent to the caller: ``{"error": code, "message": ...}``."""
        return {"error": self.code, "message": self.message}


class BadInput(MedsegError):
    """Corrupt, truncated or malformed upload, or an invalid form field."""

    status, code = 400, "bad_input"


class ModelNotFound(MedsegError):
    status, code = 404, "model_not_found"


class NotFound(MedsegError):
    """No such job, study, series or instance."""

    status, code = 404, "not_found"


class NotAcceptable(MedsegError):
    """The Accept header admits nothing the route can answer."""

    status, code = 406, "not_acceptable"


class PayloadTooLarge(MedsegError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(MedsegError):
    """Neither DICOM, PNG nor JPEG (or another format the route does not take)."""

    status, code = 415, "unsupported_media_type"


class UnsupportedTransferSyntax(MedsegError):
    """A DICOM file whose pixel data compression no installed decoder handles."""

    status, code = 415, "unsupported_transfer_syntax"


class NotAnImage(MedsegError):
    """A valid DICOM object without image pixels (RT plan, SR, SEG, presentation state...)."""

    status, code = 422, "not_an_image"


class UnprocessableImage(MedsegError):
    """A valid image that this model cannot take (wrong dimensionality, empty, absurd size)."""

    status, code = 422, "unprocessable_image"


class Overloaded(MedsegError):
    status, code = 429, "overloaded"


class BackendUnavailable(MedsegError):
    """The inference backend is not ready or not reachable; the caller should retry later."""

    status, code = 503, "backend_unavailable"


class RequestTimeout(MedsegError):
    """No response within the request deadline (MEDSEG_REQUEST_TIMEOUT_S); the request's handler
    was cancelled. 504, not 408: the deadline runs from the request's arrival to the first byte of
    the answer, as BentoML's does. No Retry-After: the service cannot tell a request too big for
    the deadline (retrying never helps) from a busy moment (429 and 503 say that, with
    Retry-After), and graph calls the request had queued may still be running in the worker."""

    status, code = 504, "timeout"


class InternalError(MedsegError):
    """Anything unexpected. The message is generic: details go to the log, never to the caller."""

    status, code = 500, "internal_error"

    def __init__(self, message: str = "internal error; the failure was logged") -> None:
        super().__init__(message)
