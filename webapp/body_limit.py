"""An ASGI middleware that rejects HTTP request bodies above a size limit with status 413."""

import logging

log = logging.getLogger("app")


class BodySizeLimit:
    """ASGI middleware that rejects a request body over `max_bytes` with status 413.

    A declared Content-Length above the limit is rejected before the body is read. A
    body without one (chunked) is buffered up to the limit and then passed on, so the
    app behind never receives more than `max_bytes`.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.reject(scope, send, declared.decode("latin-1"))
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return

        # No Content-Length: read the whole body, up to the limit, before calling the app.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self.reject(scope, send, f"more than {size}")
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def reject(self, scope, send, size: str) -> None:
        log.info("rejected request: %s %s has a body of %s bytes; the limit is %d",
                 scope["method"], scope["path"], size, self.max_bytes)
        body = (f"The request body has {size} bytes, but the limit is {self.max_bytes:,}.\n"
                .encode())
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
