"""The two kinds of failure the pipeline distinguishes, plus user mistakes.

- `MessageError`: this one message (or its object) is bad; dead-letter it and carry on.
- `InfrastructureError`: a service is down or failing; retry, never dead-letter.
- `UserError`: a wrong option or setting; one clear line on stderr, exit status 2.

`ServiceError` is what the service modules (imgpipe.kafka, imgpipe.s3, imgpipe.meili) turn a
client library's exception into: the operation, what it was about, the service's own code, and
`kind`, what that code means. It is an InfrastructureError, so by default it is retried; a caller
whose policy says otherwise (a missing object is the message's fault, a wrong key the user's)
looks at `kind` and raises MessageError or UserError instead.
"""


def _rebuild(cls, args, state):
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class UserError(Exception):
    """A mistake the user can fix (bad option, bad setting). Shown without a traceback."""


class MessageError(Exception):
    """A per-message failure: the event or the object it names cannot be processed."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason

    def __reduce__(self):  # processing raises it in worker processes: it must survive pickling
        return _rebuild, (type(self), self.args, self.__dict__)


class ObjectMissing(MessageError):
    """The object an event names is not in its bucket (deleted since, or never there). The core
    consumer dead-letters it like any bad object; a later stage may know better (enricher/)."""


class InfrastructureError(Exception):
    """A service the pipeline depends on is unreachable or failed; worth retrying."""

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.detail = detail

    def __reduce__(self):  # subclasses take other arguments: rebuild from the state, not __init__
        return _rebuild, (type(self), self.args, self.__dict__)


# What a service's answer means, whichever service gave it.
UNAVAILABLE = "unavailable"  # unreachable, timed out, 5xx, throttled: try again later
NOT_FOUND = "not_found"  # the bucket, object, index or topic named does not exist
DENIED = "denied"  # credentials or key refused, or not allowed to do this
REJECTED = "rejected"  # the request itself is invalid (bad filter, bad name, too large)
FAILED = "failed"  # the service accepted the request and then reported it failed


class ServiceError(InfrastructureError):
    """One request to an outside service failed; see the module docstring."""

    def __init__(self, service: str, operation: str, target: str, code: str, message: str, kind: str,
                 status: int | None = None, summary: str | None = None):
        """`summary` replaces the default one-line text ("<operation> <target> failed: <code> <message>")."""
        text = " ".join(f"{code} {message}".split()) or "no detail"
        if summary is None:
            summary = f"{operation} {target} failed: {text}" if target else f"{operation} failed: {text}"
        super().__init__(service, summary)
        self.operation = operation
        self.target = target
        self.code = code
        self.message = message
        self.kind = kind
        self.status = status

    @property
    def transient(self) -> bool:
        return self.kind == UNAVAILABLE
