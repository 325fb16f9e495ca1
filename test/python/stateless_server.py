"""An upstream MCP server that offers only revision 2026-07-28 (test fixture).

Serves Streamable HTTP on 127.0.0.1 at a free port and prints one JSON line,
{"url": ...}, once it listens. Every request must name a 2026-07-28-era protocol
version in its MCP-Protocol-Version header; anything else (an `initialize`, a
2025-11-25 request, a GET stream) is refused with the revision's
unsupported-version error, so a client that only knows sessions cannot use it.

State is explicit, as the revision wants (SEP-2567): `counter_new` mints a handle,
`counter_add` and `counter_get` take it as an ordinary argument.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sys
from typing import Annotated

import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

server = MCPServer(
    "py-stateless",
    version="1.0.0",
    instructions="A stateless test upstream.",
    # the revision's list TTL hints, so a gateway can be seen to carry them
    cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="public")},
)
counters: dict[str, int] = {}


@server.tool()
def echo(text: str) -> str:
    """Answers with the text it was given."""
    return text


@server.tool()
def counter_new() -> str:
    """Starts a counter at 0 and answers with its handle."""
    handle = secrets.token_hex(8)
    counters[handle] = 0
    return handle


@server.tool()
def counter_add(handle: str, by: int = 1) -> int:
    """Adds to the counter of this handle and answers with its value."""
    if handle not in counters:
        raise ValueError(f"unknown counter handle {handle}")
    counters[handle] += by
    return counters[handle]


@server.tool()
async def progress(steps: int, ctx: Context, pause: float = 0.0) -> str:
    """Reports progress 1..steps (pausing between steps), then answers "done <steps>"."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps)
        await asyncio.sleep(pause)
    return f"done {steps}"


@server.tool()
def fail(message: str) -> str:
    """Always raises: a tool error with this message."""
    raise ValueError(message)


class Name(BaseModel):
    name: str


def ask_name() -> Elicit[Name]:
    return Elicit("What is your name?", Name)


@server.tool()
def greet(who: Annotated[Name, Resolve(ask_name)]) -> str:
    """Asks the client for a name (elicitation: the revision's input_required), then greets it."""
    return f"Hello, {who.name}!"


def modern_only(app):
    """Refuses every request without an MCP-Protocol-Version header or with a session-era one.

    Other versions reach the SDK, which answers an unknown one with its own -32022.
    """

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        version = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"mcp-protocol-version"), None)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return await app(scope, receive, send)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32022,
                    "message": "Unsupported protocol version",
                    "data": {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": version},
                },
            }
        ).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return guarded


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = server.streamable_http_app()
    config = uvicorn.Config(modern_only(app), log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    # the lifespan starts the session manager; print the URL only once it runs
    original_startup = uv.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp"}), flush=True)

    uv.startup = startup
    uv.run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
