"""Request bodies capped before anything reads them: a client that sends 100 MB of JSON to an endpoint is answered
413 at once, instead of having the body parsed (and kept) before the app refuses it.

A plain ASGI middleware, passed to the FastAPI app Gradio makes (``launch(app_kwargs={"middleware": ...})``): a
declared ``Content-Length`` over the cap is refused before the body is read; a body without one (chunked) is
counted as it arrives and cut off at the cap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["MAX_BODY_BYTES", "BodyCap"]

MAX_BODY_BYTES = 2 * 2**20  # the largest request the app needs: a 1 MB upload with its form fields
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyCap:
    def __init__(self, app: App, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            # Past the cap: answer 413 now, and tell the app the client went away (whatever it sends is dropped).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, sending)

    async def _refuse(self, send: Send) -> None:
        body = (f'{{"error": "the request body is larger than {self.max_bytes // 2**20} MiB, the most this app '
                'reads"}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
