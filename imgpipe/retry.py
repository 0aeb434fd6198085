"""Retry an operation on a service outage, with exponential backoff, until it works or we stop.

Infrastructure failures are never dead-lettered: the message waits for the service. A stop
request (SIGTERM) interrupts the wait, and the caller then commits nothing past the failure.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

from tenacity import Retrying, retry_if_exception, stop_when_event_set, wait_exponential_jitter

from imgpipe.errors import InfrastructureError

log = logging.getLogger(__name__)
T = TypeVar("T")


# Called with the failing service's name ("s3", "meilisearch", "kafka") before each retry: the
# consumer's metrics count retries by service this way.
retry_observers: list[Callable[[str], None]] = []


class Stopped(Exception):
    """A stop was requested while an operation was still failing; its work is abandoned."""


def retry_until_stopped(operation: Callable[[], T], stop: threading.Event, *, initial: float = 0.2,
                        maximum: float = 5.0, only_transient: bool = False) -> T:
    """Run `operation`, retrying while it raises InfrastructureError; raise Stopped on stop.
    With `only_transient`, a ServiceError that is not an outage (a missing bucket, a refused
    key) is raised at once instead."""

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, InfrastructureError):
            return False
        return not only_transient or getattr(exc, "transient", True)

    def before_sleep(state) -> None:
        exc = state.outcome.exception()
        for observe in retry_observers:
            observe(getattr(exc, "service", "other"))
        level = logging.WARNING if state.attempt_number in (1, 5) or state.attempt_number % 20 == 0 else logging.DEBUG
        log.log(level, "%s (attempt %d); retrying in %.1f s", exc, state.attempt_number,
                state.next_action.sleep if state.next_action else 0)

    retrying = Retrying(
        retry=retry_if_exception(retryable),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum),
        stop=stop_when_event_set(stop),
        sleep=stop.wait,  # wakes up at once when a stop is requested
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(operation)
    except InfrastructureError as exc:
        if stop.is_set() and retryable(exc):
            raise Stopped("stop requested while a service was failing") from None
        raise
