// Which upstream session actors an event or request closes, and why: the policy, apart from
// the host that applies it to the actors it holds.
import type { GatewayEvent } from "../../protocol/gateway.ts";
import type { CloseCause } from "./machine.ts";

/** Closes the actors of `sid` and/or `gid` (every actor when both are absent). */
export type Eviction = { sid?: string | undefined; gid?: string | undefined; cause: CloseCause; reason: string };

export function evicts(e: Eviction, actor: { sid: string; gid: string }): boolean {
  return (e.sid === undefined || e.sid === actor.sid) && (e.gid === undefined || e.gid === actor.gid);
}

/** True when only the gateway's current record tells whether `ev` disables it (an `enabled` edit). */
export function needsEnabledCheck(ev: GatewayEvent): boolean {
  return ev.type === "updated" && !ev.connectChanged && ev.changedFields.includes("enabled");
}

/**
 * A gateway event: removal and connection changes close its sessions (cosmetic edits keep
 * them); an `enabled` edit closes them when the gateway is now disabled (`enabledNow`).
 */
export function evictionOnGatewayEvent(ev: GatewayEvent, enabledNow?: boolean): Eviction | null {
  if (ev.type === "removed") return { gid: ev.gid, cause: "gateway_removed", reason: "gateway removed" };
  if (ev.type !== "updated") return null;
  if (ev.connectChanged) return { gid: ev.gid, cause: "gateway_changed", reason: `gateway connection changed (${ev.changedFields.join(", ")})` };
  if (needsEnabledCheck(ev) && enabledNow === false) return { gid: ev.gid, cause: "gateway_disabled", reason: "gateway disabled" };
  return null;
}

export function evictionOnSessionClosed(ev: { sid: string; reason: string }): Eviction {
  return { sid: ev.sid, cause: "client_session_ended", reason: `downstream session closed (${ev.reason})` };
}

/** An operator's eviction (by session and/or gateway) or a drain (`all`). */
export function evictionOnRequest(req: { sid?: string | undefined; gid?: string | undefined; all?: true | undefined; reason?: string | undefined }): Eviction {
  if (req.all) return { cause: "drain", reason: req.reason ?? "drain" };
  return { sid: req.sid, gid: req.gid, cause: "evicted", reason: req.reason ?? "evicted by an operator" };
}
