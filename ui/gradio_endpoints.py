"""A 404, not a 500, for a Gradio API call that names an event or component the app does not have.

Gradio (6.x) looks the event up without checking that it exists: POST /gradio_api/run/<name>,
/api/<name>, /call/<name> and /call/v2/<name> with an unknown name, /queue/join or /run/predict
with an unknown fn_index, and /component_server with an unknown component_id end in a KeyError
that the server answers with 500, logging a traceback for a mere typo (or a probe). This guard
sits in front of the mounted app and checks the name or index against the Blocks first.

A name counts when an event has it and is not private: Gradio documents private events as not
callable by name, and every event of this UI is private (the page calls them by fn_index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from gradio.data_classes import ComponentServerJSONBody, PredictBody
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .access import route_path

PREFIX = "/gradio_api/"


@dataclass(frozen=True)
class Lookup:
    """What a request asks Gradio to find: an event by name, by fn_index in the body, or a
    component by id in the body."""

    name: str | None = None
    index_in_body: bool = False
    component_in_body: bool = False


def lookup_for(method: str, path: str) -> Lookup | None:
    """The lookup a Gradio route would make for this request, or None for any other route.
    `path` is below where the app is mounted; only the shapes Gradio's routes accept match."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX):].split("/")
    if method == "POST":
        if parts[-1] == "" and len(parts) > 1:  # Gradio's routes also take one trailing slash
            parts = parts[:-1]
        return _post_lookup(parts)
    if method == "GET" and len(parts) in (3, 4) and parts[0] == "call":
        # /call/<name>/<event_id> and /call/v2/<name>/<event_id>: results of a call by name.
        if len(parts) == 3:
            return Lookup(name=parts[1])
        return Lookup(name=parts[2]) if parts[1] == "v2" else None
    return None


def _post_lookup(parts: list[str]) -> Lookup | None:
    if parts in (["queue", "join"], ["component_server"]):
        return Lookup(index_in_body=parts[0] == "queue", component_in_body=parts[0] == "component_server")
    if len(parts) == 2 and parts[0] in ("run", "api"):
        return Lookup(name=parts[1], index_in_body=True)  # a fn_index in the body wins over the name
    if len(parts) == 2 and parts[0] == "call":
        return Lookup(name=parts[1])
    if len(parts) == 3 and parts[:2] == ["call", "v2"]:
        return Lookup(name=parts[2])
    return None


def callable_names(blocks) -> set[str]:
    return {fn.api_name for fn in blocks.fns.values() if fn.api_name and fn.api_visibility != "private"}


def problem(blocks, lookup: Lookup, body: bytes | None) -> str | None:
    """Why Gradio would not find what the request names, or None when it would (or when the
    body is not one Gradio accepts: its own check answers that with a 4xx)."""
    if lookup.component_in_body:
        component = _parsed(ComponentServerJSONBody, body)
        if component is not None and component.component_id not in blocks.blocks:
            return f"Unknown component_id {component.component_id}: the page may be out of date, reload it"
        return None
    if lookup.index_in_body:
        predict = _parsed(PredictBody, body)
        if predict is None:
            return None
        if predict.fn_index is not None:
            if predict.fn_index not in blocks.fns:
                return f"Unknown fn_index {predict.fn_index}: the page may be out of date, reload it"
            return None
    if lookup.name is not None and lookup.name not in callable_names(blocks):
        known = ", ".join(sorted(callable_names(blocks))) or "none (the page calls its events by index)"
        return f"No API endpoint named '{lookup.name}'. Endpoints callable by name: {known}"
    return None


def _parsed(model, body: bytes | None):
    if body is None:
        return None
    try:  # parsed, then validated, as FastAPI does for Gradio's route
        return model.model_validate(json.loads(body))
    except (ValidationError, ValueError, RecursionError):
        return None


class UnknownEndpointGuard:
    """ASGI middleware: answers 404 with a clear message for a Gradio call naming an event or
    component that does not exist; everything else goes through untouched."""

    def __init__(self, app: ASGIApp, blocks: Callable[[], object | None]):
        self.app = app
        self.blocks = blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blocks = self.blocks() if scope["type"] == "http" else None
        lookup = lookup_for(scope.get("method", ""), route_path(scope)) if blocks is not None else None
        if lookup is None:
            await self.app(scope, receive, send)
            return
        body, messages = None, []
        if lookup.index_in_body or lookup.component_in_body:
            # Read whole, as Gradio's route would: a body cut short could hide the index.
            messages = await _read(receive)
            if messages is None:
                return  # the client went away
            body = b"".join(m.get("body", b"") for m in messages)
        reason = problem(blocks, lookup, body)
        if reason is not None:
            await JSONResponse({"error": "Not Found", "detail": reason}, status_code=404)(scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)


async def _read(receive: Receive) -> list[Message] | None:
    """The request's body messages; None when the client disconnected."""
    messages = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives the messages already read, then the rest from the client."""
    pending = list(messages)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again

