"""The Python MCP SDK 2.3.0 client for the revision tests: connects, lists and calls tools.

Reads a plan from stdin, a JSON list of runs:

    [{"url": "http://...", "mode": "legacy" | "2026-07-28" | "auto", "token": "...",
      "calls": [["tool name", {"arg": "value"}], ...]}, ...]

and makes them all at once (one interpreter: importing the SDK is the slow part). `legacy` is
a 2025-11-25 session client (initialize, Mcp-Session-Id); `2026-07-28` speaks the stateless
revision from its first request; `auto` probes with server/discover and falls back to the
handshake, as the SDK does by default. Tokens come on stdin, never argv. Prints one JSON list
on stdout, a report per run in plan order: the negotiated version, the tools listed, each
call's result or error, and the connection's error if it failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON: an MCP error's code and message, else its type and text (groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return {"code": exc.code, "message": exc.error.message, "data": exc.error.data}
    return {"type": type(exc).__name__, "message": str(exc)}


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": plan["mode"]}
    token = plan.get("token")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        transport = streamable_http_client(plan["url"], http_client=http)
        try:
            async with Client(transport, mode=plan["mode"], read_timeout_seconds=60) as client:
                out["protocolVersion"] = client.protocol_version
                listed = await client.list_tools()
                out["tools"] = [t.name for t in listed.tools]
                # only a 2026-era answer carries it (the model defaults it otherwise)
                out["listTtlMs"] = listed.ttl_ms if "ttl_ms" in listed.model_fields_set else None
                calls = []
                for name, arguments in plan.get("calls", []):
                    try:
                        result = await client.call_tool(name, arguments)
                        calls.append({"name": name, "result": result.model_dump(mode="json", by_alias=True, exclude_none=True)})
                    except Exception as exc:  # noqa: BLE001 - the test reads what failed
                        calls.append({"name": name, "error": describe(exc)})
                out["calls"] = calls
        except BaseException as exc:  # noqa: BLE001 - reported, not raised: the test reads it
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            out["error"] = describe(exc)
    return out


async def run_all(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(run(plan) for plan in plans)))


def main() -> None:
    print(json.dumps(asyncio.run(run_all(json.load(sys.stdin)))), flush=True)


if __name__ == "__main__":
    main()
