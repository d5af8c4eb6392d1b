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


class ForbiddenError(UserError):
    """The request is understood but not allowed here (a setting frozen by a start flag)."""

    status = 403


class TooLargeError(UserError):
    """A request carries more than the server takes (too many settings, too big a body)."""

    status = 413


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, refused or not a model we know."""

    status = 400


class NoModelError(UserError):
    """Generation was asked for while no checkpoint is loaded."""

    status = 503


class QueueFullError(UserError):
    """Too many jobs are waiting already (--queue-size): try again when some have run."""

    status = 429


class OutOfMemoryUserError(UserError):
    """A job ran out of GPU or system memory; engine.memory_guard writes the message (the stage,
    what to change). The API answers 507 Insufficient Storage: the server lacks the room this
    request needs. Not 503, which clients and proxies retry unchanged (the same request would
    run out again), and not 4xx, since the request is valid and may fit on a bigger machine."""

    status = 507

    def __init__(self, message: str, stages: tuple[str, ...] = (), memory: str = "GPU", needed: str = ""):
        super().__init__(message)
        self.stages = stages    # where it ran out, innermost first ("denoise", "hires_fix")
        self.memory = memory    # "GPU" or "system"
        self.needed = needed    # what the failed allocation asked for, when torch said ("2.00 GiB")


class ScriptError(UserError):
    """A script's own code failed (not the request): the job ends with this message; the app
    keeps serving (a 422 with this message, never an unexplained 500)."""


class JobInterrupted(Exception):
    """Raised inside a job when the user interrupts it before anything was produced."""
