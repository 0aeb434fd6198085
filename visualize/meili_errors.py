"""MeiliSearch's errors, said in one line: the request was wrong (UserError, exit 2) or the
server cannot be reached or failed (InfrastructureError, exit 1)."""
from __future__ import annotations

import re
from contextlib import contextmanager

from imgpipe.errors import InfrastructureError, UserError
from imgpipe.settings import Settings

# Error codes that mean the request itself was wrong, with how to name them.
REQUEST_ERRORS = {"invalid_search_filter": "invalid filter", "invalid_search_sort": "invalid sort",
                  "invalid_search_limit": "invalid limit", "invalid_search_offset": "invalid offset",
                  "index_not_found": "no such index"}
_POSITION = re.compile(r"(\d+):(\d+) (.*)")


def one_line(message: str) -> str:
    """MeiliSearch's message on one line. The client appends a version hint to every search
    error, which only misleads; a filter error's second line is `start:end snippet`."""
    message = str(message).split(". Hint: It might not be working")[0].strip()
    first, _, rest = message.partition("\n")
    position = _POSITION.fullmatch(rest.strip())
    if position:
        return f"{first.strip()} (characters {position[1]}-{position[2]} of: {position[3]})"
    return " ".join(message.split())


@contextmanager
def meili_errors(settings: Settings, request_errors: dict[str, str] = REQUEST_ERRORS):
    from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError

    try:
        yield
    except MeilisearchCommunicationError:
        raise InfrastructureError("meilisearch", f"cannot reach {settings.meili_url} (connection failed; "
                                  "is MeiliSearch running? `make up` starts the local one)") from None
    except MeilisearchTimeoutError:
        raise InfrastructureError("meilisearch", f"{settings.meili_url} did not answer in time") from None
    except MeilisearchApiError as exc:
        if exc.code in request_errors:
            raise UserError(f"{request_errors[exc.code]}: {one_line(exc.message)}") from None
        if exc.status_code in (401, 403):
            raise UserError(f"MeiliSearch at {settings.meili_url} refused the key (MEILI_SEARCH_KEY): "
                            f"{one_line(exc.message)}") from None
        raise InfrastructureError("meilisearch", f"{settings.meili_url} answered {exc.status_code} "
                                  f"{exc.code}: {one_line(exc.message)}") from None
