"""Reading a request body in a middleware, and handing it on to the app as if unread."""

from __future__ import annotations

from starlette.types import Message, Receive


async def read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is longer than `limit` bytes (reading stops there)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    """A `receive` that gives `body` once, then says the client is gone (as a real one would after
    the response)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
