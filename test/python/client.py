"""A Python MCP SDK 2.3.0 client for the revision tests: connects, lists and calls tools.

    python client.py URL --mode legacy|2026-07-28|auto [--call NAME JSON_ARGS]...

A bearer token, when needed, comes from the environment (MCP_BEARER_TOKEN), never argv.

`legacy` is a 2025-11-25 session client (initialize, Mcp-Session-Id); `2026-07-28` speaks
the stateless revision from its first request; `auto` probes with server/discover and
falls back to the handshake, as the SDK does by default. Prints one JSON object on stdout:
the negotiated version, the tool names listed, each call's result (or error), and the
connection's error if it failed. Exit code 0 whenever that JSON was printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": args.mode}
    token = os.environ.get("MCP_BEARER_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        transport = streamable_http_client(args.url, http_client=http)
        try:
            async with Client(transport, mode=args.mode, read_timeout_seconds=60) as client:
                out["protocolVersion"] = client.protocol_version
                listed = await client.list_tools()
                out["tools"] = [t.name for t in listed.tools]
                # only a 2026-era answer carries it (the model defaults it otherwise)
                out["listTtlMs"] = listed.ttl_ms if "ttl_ms" in listed.model_fields_set else None
                calls = []
                for name, raw in args.call or []:
                    try:
                        result = await client.call_tool(name, json.loads(raw))
                        calls.append({"name": name, "result": result.model_dump(mode="json", by_alias=True, exclude_none=True)})
                    except Exception as exc:  # noqa: BLE001 - the test reads what failed
                        calls.append({"name": name, "error": describe(exc)})
                out["calls"] = calls
        except BaseException as exc:  # noqa: BLE001 - reported, not raised: the test reads it
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            out["error"] = describe(exc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--mode", required=True, choices=["legacy", "2026-07-28", "auto"])
    parser.add_argument("--call", nargs=2, action="append", metavar=("NAME", "JSON_ARGS"))
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
