"""The Python MCP SDK 2.3.0 client for the revision tests: connects, lists and calls tools.

Reads a plan from stdin, a JSON list of runs:

    [{"url": "http://...", "mode": "legacy" | "2026-07-28" | "auto", "token": "...",
      "calls": [["tool name", {"arg": "value"}], ...],
      "elicit": {"field": "value"}, "sample": "text", "progress": true,
      "listen": {"tools": true, "uris": ["..."], "events": 2}}, ...]

and makes them all at once (one interpreter: importing the SDK is the slow part). `legacy` is
a 2025-11-25 session client (initialize, Mcp-Session-Id); `2026-07-28` speaks the stateless
revision from its first request; `auto` probes with server/discover and falls back to the
handshake, as the SDK does by default. Tokens come on stdin, never argv. Prints one JSON list
on stdout, a report per run in plan order: the negotiated version, the tools listed, each
call's result or error, and the connection's error if it failed.

`elicit` / `sample` declare the capability and answer every elicitation (accept, with that
content) / sampling request (that text) the server asks, counting them (`asked`); `progress`
collects each call's progress notifications. `listen` (one run alone) opens
`subscriptions/listen` after the calls, prints `{"honored": ...}` on a line of its own, waits
for `events` events (1 unless given) and reports their types (`events`) with the rest.
"""

from __future__ import annotations

import asyncio
import json

import anyio
import sys
from typing import Any

import httpx2
import mcp_types as types
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
    asked: dict[str, int] = {"elicitation": 0, "sampling": 0}
    callbacks: dict[str, Any] = {}
    if "elicit" in plan:

        async def elicit(_ctx: Any, _params: types.ElicitRequestParams) -> types.ElicitResult:
            asked["elicitation"] += 1
            return types.ElicitResult(action="accept", content=plan["elicit"])

        callbacks["elicitation_callback"] = elicit
    if "sample" in plan:

        async def sample(_ctx: Any, _params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            asked["sampling"] += 1
            return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=plan["sample"]), model="test-model")

        callbacks["sampling_callback"] = sample
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        transport = streamable_http_client(plan["url"], http_client=http)
        try:
            async with Client(transport, mode=plan["mode"], read_timeout_seconds=60, **callbacks) as client:
                out["protocolVersion"] = client.protocol_version
                listed = await client.list_tools()
                out["tools"] = [t.name for t in listed.tools]
                # only a 2026-era answer carries it (the model defaults it otherwise)
                out["listTtlMs"] = listed.ttl_ms if "ttl_ms" in listed.model_fields_set else None
                calls = []
                for name, arguments in plan.get("calls", []):
                    progress: list[float] = []

                    async def on_progress(value: float, _total: float | None, _message: str | None, into: list[float] = progress) -> None:
                        into.append(value)

                    try:
                        result = await client.call_tool(name, arguments, **({"progress_callback": on_progress} if plan.get("progress") else {}))
                        calls.append({"name": name, "result": result.model_dump(mode="json", by_alias=True, exclude_none=True), "progress": progress})
                    except Exception as exc:  # noqa: BLE001 - the test reads what failed
                        calls.append({"name": name, "error": describe(exc), "progress": progress})
                out["calls"] = calls
                out["asked"] = asked
                if "listen" in plan:
                    wanted = plan["listen"]
                    async with client.listen(
                        tools_list_changed=wanted.get("tools", False),
                        prompts_list_changed=wanted.get("prompts", False),
                        resources_list_changed=wanted.get("resources", False),
                        resource_subscriptions=wanted.get("uris", ()),
                    ) as sub:
                        honored = sub.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
                        out["honored"] = honored
                        print(json.dumps({"honored": honored}), flush=True)
                        out["events"] = []
                        with anyio.fail_after(60):
                            async for event in sub:
                                out["events"].append(type(event).__name__)
                                if len(out["events"]) >= wanted.get("events", 1):
                                    break
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
