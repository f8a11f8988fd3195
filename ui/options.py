"""How the app is queued and launched, and what every event shares."""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware

from .body_cap import BodyCap
from .views import CSS, PAGE_JS

# Uploads are small (a schedule file at most): anything larger is refused before it is stored, and every request
# body over 2 MiB before it is read (body_cap.py).
LAUNCH_OPTIONS = {"css": CSS, "js": PAGE_JS, "max_file_size": "1mb",
                  "app_kwargs": {"middleware": [Middleware(BodyCap)]}}
# Images and searches set no queue limit of their own (admission.py bounds them per session and in all,
# with a wait estimate); everything else runs one at a time; at most 32 waiting, then "queue is full".
QUEUE_OPTIONS = {"default_concurrency_limit": 1, "max_size": 32}
# An event only the page itself triggers: not listed on the API page, not callable by name.
PRIVATE: dict[str, Any] = {"api_visibility": "private"}


def session_of(request: Any) -> str | None:
    """The browser (or API client) session asking (a ``gr.Request``), for per-session limits."""
    return getattr(request, "session_hash", None) if request is not None else None
