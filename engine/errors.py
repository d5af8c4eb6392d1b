"""Errors the engine raises for problems a user can fix.

Both the UI and the HTTP API turn these into messages, so the wording is written for people:
it names the field or file at fault and what would be accepted instead.
"""


class UserError(Exception):
    """A problem with what the user asked for. `status` is the HTTP status the API answers with."""

    status = 422

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class RequestError(UserError):
    """A request field is missing, of the wrong kind or out of range."""


class NotFoundError(UserError):
    """A named thing (sampler, checkpoint, ...) does not exist. The ecosystem's API answers 400 here."""

    status = 400


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, refused or not a model we know."""

    status = 400


class NoModelError(UserError):
    """Generation was asked for while no checkpoint is loaded."""

    status = 503


class QueueFullError(UserError):
    """Too many jobs are waiting already (--queue-size): try again when some have run."""

    status = 429


class JobInterrupted(Exception):
    """Raised inside a job when the user interrupts it before anything was produced."""
