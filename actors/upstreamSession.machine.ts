// The upstream session actor: one MCP client session to one upstream, owned by exactly one
// downstream session. This machine decides *when* the session may serve calls, must be
// probed, recreated or closed; the runtime provides the effects (connect, probe, close)
// and runs the calls it is told to start.
import { assign, fromPromise, setup } from "xstate";
import { shortErrorText } from "./errorText.ts";

/** Idle probe order; "method not found" moves to the next step, the end of the list means alive. */
export const PROBE_METHODS = ["ping", "tools/list", "prompts/list", "resources/list"] as const;
export type ProbeMethod = (typeof PROBE_METHODS)[number];
export type ProbeOutcome = "ok" | "method_not_found";

/** Why a session closed, in a bounded set of words (a metric label); `closeReason` says it in full. */
export type CloseCause =
  | "idle"
  | "transport_error"
  | "connect_failed"
  | "upstream_closed"
  | "client_session_ended"
  | "gateway_removed"
  | "gateway_changed"
  | "gateway_disabled"
  | "evicted"
  | "drain"
  | "requested"
  | "shutdown";

export type UpstreamSessionEvent =
  /** a call arrived; the runtime holds it under `callId` until told to start or fail it */
  | { type: "CALL"; callId: string }
  /** a started call finished; `transportFailed` when the upstream connection broke under it */
  | { type: "CALL_DONE"; callId: string; transportFailed: boolean }
  | { type: "CLOSE"; reason: string; cause: CloseCause };

export type UpstreamSessionContext = {
  /** calls waiting for the session to be connected or validated */
  queued: string[];
  inflight: number;
  probeStep: number;
  closeReason: string;
  closeCause: CloseCause | null;
};

export const upstreamSessionMachine = setup({
  types: {
    context: {} as UpstreamSessionContext,
    events: {} as UpstreamSessionEvent,
  },
  actors: {
    /** opens a fresh upstream session (replacing any previous one) and initializes it */
    connect: fromPromise<void>(async () => {
      throw new Error("connect not provided");
    }),
    /** one idle-validation request; rejects on transport error */
    probe: fromPromise<ProbeOutcome, { method: ProbeMethod }>(async () => {
      throw new Error("probe not provided");
    }),
    /** polite close: end the upstream session, let the transport shut down */
    closeGracefully: fromPromise<void>(async () => {
      throw new Error("closeGracefully not provided");
    }),
    /** after the grace window: abort sockets, SIGKILL the child process */
    forceClose: fromPromise<void>(async () => {
      throw new Error("forceClose not provided");
    }),
  },
  actions: {
    startCalls: (_, _params: { callIds: string[] }) => {},
    failCalls: (_, _params: { callIds: string[]; reason: string }) => {},
    /** the actor stops accepting calls (its address goes away) */
    stopAccepting: () => {},
    /** the upstream neither closed nor could be forced; logged, then abandoned */
    giveUp: (_, _params: { reason: string }) => {},
  },
  guards: {
    transportFailed: ({ event }) => event.type === "CALL_DONE" && event.transportFailed,
    hasCallsInFlight: ({ context }) => context.inflight > 0,
    methodNotFoundWithStepsLeft: ({ context, event }) =>
      (event as { output?: ProbeOutcome }).output === "method_not_found" && context.probeStep < PROBE_METHODS.length - 1,
  },
  delays: {
    idleValidation: 60_000,
    sessionIdleTtl: 30 * 60_000,
    probeTimeout: 5_000,
    shutdownTimeout: 5_000,
  },
}).createMachine({
  id: "upstreamSession",
  initial: "open",
  context: { queued: [], inflight: 0, probeStep: 0, closeReason: "", closeCause: null },
  states: {
    open: {
      initial: "connecting",
      on: {
        CLOSE: { target: "closing", actions: assign({ closeReason: ({ event }) => event.reason, closeCause: ({ event }) => event.cause }) },
        CALL_DONE: [
          {
            guard: "transportFailed",
            target: "closing",
            actions: assign({ inflight: ({ context }) => context.inflight - 1, closeReason: "transport error during a call", closeCause: "transport_error" }),
          },
          { actions: assign({ inflight: ({ context }) => context.inflight - 1 }) },
        ],
      },
      states: {
        connecting: {
          on: { CALL: { actions: assign({ queued: ({ context, event }) => [...context.queued, event.callId] }) } },
          invoke: {
            src: "connect",
            onDone: { target: "ready" },
            onError: {
              target: "#upstreamSession.closing",
              actions: assign({ closeReason: ({ event }) => `cannot connect: ${shortErrorText(event.error)}`, closeCause: "connect_failed" }),
            },
          },
        },
        ready: {
          entry: [
            { type: "startCalls", params: ({ context }) => ({ callIds: context.queued }) },
            assign({ inflight: ({ context }) => context.inflight + context.queued.length, queued: [] }),
          ],
          // Only incoming calls count as activity: each one re-enters `ready`, restarting both timers.
          after: {
            sessionIdleTtl: [
              { guard: "hasCallsInFlight", target: "ready", reenter: true },
              { target: "#upstreamSession.closing", actions: assign({ closeReason: "idle expiry", closeCause: "idle" }) },
            ],
          },
          initial: "fresh",
          states: {
            fresh: {
              after: { idleValidation: "stale" },
              on: {
                CALL: {
                  target: "#upstreamSession.open.ready",
                  reenter: true,
                  actions: [
                    { type: "startCalls", params: ({ event }) => ({ callIds: [event.callId] }) },
                    assign({ inflight: ({ context }) => context.inflight + 1 }),
                  ],
                },
              },
            },
            stale: {
              on: {
                CALL: {
                  target: "#upstreamSession.open.validating",
                  actions: assign({ queued: ({ context, event }) => [...context.queued, event.callId], probeStep: 0 }),
                },
              },
            },
          },
        },
        validating: {
          on: { CALL: { actions: assign({ queued: ({ context, event }) => [...context.queued, event.callId] }) } },
          invoke: {
            src: "probe",
            input: ({ context }) => ({ method: PROBE_METHODS[context.probeStep]! }),
            onDone: [
              {
                guard: "methodNotFoundWithStepsLeft",
                target: "validating",
                reenter: true,
                actions: assign({ probeStep: ({ context }) => context.probeStep + 1 }),
              },
              // answered, or every step said "method not found": the session is alive
              { target: "ready" },
            ],
            onError: { target: "connecting" },
          },
          after: { probeTimeout: { target: "connecting" } },
        },
      },
    },
    closing: {
      entry: [
        "stopAccepting",
        { type: "failCalls", params: ({ context }) => ({ callIds: context.queued, reason: context.closeReason }) },
        assign({ queued: [] }),
      ],
      on: { CALL: { actions: { type: "failCalls", params: ({ event }) => ({ callIds: [event.callId], reason: "the session is closing" }) } } },
      invoke: { src: "closeGracefully", onDone: "closed", onError: "forcing" },
      after: { shutdownTimeout: "forcing" },
    },
    forcing: {
      on: { CALL: { actions: { type: "failCalls", params: ({ event }) => ({ callIds: [event.callId], reason: "the session is closing" }) } } },
      invoke: { src: "forceClose", onDone: "closed", onError: "gaveUp" },
      after: { shutdownTimeout: "gaveUp" },
    },
    gaveUp: {
      entry: { type: "giveUp", params: ({ context }) => ({ reason: context.closeReason }) },
      always: "closed",
    },
    closed: { type: "final" },
  },
});

export type UpstreamSessionMachine = typeof upstreamSessionMachine;

/** The short state name shown by snapshots: connecting, ready, validating, closing, forcing, closed. */
export function stateName(value: unknown): string {
  if (typeof value === "string") return value;
  if (value && typeof value === "object") {
    const [k, v] = Object.entries(value)[0] ?? ["unknown", null];
    return k === "open" ? stateName(typeof v === "string" ? v : v ? Object.keys(v)[0] : "open") : k;
  }
  return "unknown";
}
