"""The two kinds of failure the pipeline distinguishes, plus user mistakes.

- `MessageError`: this one message (or its object) is bad; dead-letter it and carry on.
- `InfrastructureError`: a service is down or failing; retry, never dead-letter.
- `UserError`: a wrong option or setting; one clear line on stderr, exit status 2.
"""


class UserError(Exception):
    """A mistake the user can fix (bad option, bad setting). Shown without a traceback."""


class MessageError(Exception):
    """A per-message failure: the event or the object it names cannot be processed."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


class InfrastructureError(Exception):
    """A service the pipeline depends on is unreachable or failed; worth retrying."""

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.detail = detail
