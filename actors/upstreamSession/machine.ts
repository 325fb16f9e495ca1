// The upstream session actor: one MCP client session to one upstream, owned by exactly one
// downstream session. This machine owns the actor's whole life: claiming its key, when it
// may serve calls, must be probed, recreated, drained or closed, and which calls are queued
// or in flight. The runtime gives each actor its effects (connect, probe, close, the calls it
// is told to start) in its input: the machine is built once per process and shared by every
// actor (a `provide` per actor would copy its whole state tree for each session).
// A ready session's calls need no transition: the host admits them to the call table directly
// when `takesCallAtOnce` / `endsCallAtOnce` say the machine would do only that.
import { assign, emit, fromPromise, setup, type SnapshotFrom } from "xstate";
import { shortErrorText } from "../errorText.ts";

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

/** A call as the machine sees it; `payload` is the runtime's (the request, its reply address, ...). */
export type SessionCall = { id: string; requestId: string; payload?: unknown };

export type UpstreamSessionEvent =
  /** this worker holds the claim on the actor's key: connect */
  | { type: "CLAIMED" }
  /** another actor holds it: go away without a word (it got the same messages) */
  | { type: "CLAIM_LOST" }
  | { type: "CALL"; call: SessionCall }
  /** a started call finished; `transportFailed` when the upstream connection broke under it */
  | { type: "CALL_DONE"; callId: string; transportFailed: boolean }
  /** the client cancelled the request `requestId` */
  | { type: "CANCEL"; requestId: string; reason: string }
  | { type: "CLOSE"; reason: string; cause: CloseCause }
  /** the worker stops: calls in flight may finish within shutdownTimeout, then close */
  | { type: "DRAIN" };

/**
 * The calls in flight and when the session was last used: one mutable table per actor (the
 * context keeps the same one), so a call of a ready session is a table update, not a transition.
 */
export class CallTable {
  readonly inflight = new Map<string, SessionCall>();
  /** when the session last became ready or received a call (by the actor's `now`) */
  lastActiveAt = 0;

  admit(calls: SessionCall[], now: number): void {
    for (const c of calls) this.inflight.set(c.id, c);
    this.lastActiveAt = now;
  }
}

/** What the actor tells its host: serving, or closing (a spawn waiting for it answers with the reason). */
export type UpstreamSessionEmitted = { type: "ready" } | { type: "closing"; reason: string };

export type UpstreamSessionContext = {
  /** calls waiting for the claim, the connection or a probe */
  queued: SessionCall[];
  /** started calls, and the last activity */
  calls: CallTable;
  probeStep: number;
  closeReason: string;
  closeCause: CloseCause | null;
  /** the worker stops while calls wait for the claim, the connection or a probe: they run first, then the actor drains */
  drainRequested: boolean;
  /** the actor's clock (monotonic ms): idleness is measured from the last call, not by restarting timers on every call */
  now: () => number;
  idleValidationMs: number;
  sessionIdleTtlMs: number;
  probeTimeoutMs: number;
  shutdownTimeoutMs: number;
  effects: UpstreamSessionEffects;
};

/** What an actor does to the world; the host gives each actor its own (tests give fakes). */
export type UpstreamSessionEffects = {
  /** opens a fresh upstream session (replacing any previous one) and initializes it */
  connect(signal: AbortSignal): Promise<void>;
  /** one idle-validation request; rejects on transport error */
  probe(method: ProbeMethod): Promise<ProbeOutcome>;
  /** polite close: end the upstream session, let the transport shut down */
  closeGracefully(): Promise<void>;
  /** after the grace window: abort sockets, SIGKILL the child process */
  forceClose(): Promise<void>;
  /** starts calls: their upstream requests are sent */
  startCalls(calls: SessionCall[]): void;
  /** answers calls that never started with an error */
  failCalls(calls: SessionCall[], reason: string): void;
  /** ends started calls (their upstream requests are cancelled); each is answered with `reason` */
  abortCalls(calls: SessionCall[], reason: string): void;
  /** new calls go elsewhere; answers to what the upstream asked still reach the actor */
  stopTakingCalls(): void;
  /** the actor stops accepting anything (its address goes away) */
  stopAccepting(): void;
  /** the upstream neither closed nor could be forced; logged, then abandoned */
  giveUp(reason: string): void;
};

/**
 * What the host gives the actor: its effects, its clock, idle thresholds and time bounds
 * (defaults: performance.now, 60 s, 30 min, probe 5 s, shutdown 5 s).
 */
export type UpstreamSessionInput = {
  effects: UpstreamSessionEffects;
  now?: () => number;
  idleValidationMs?: number;
  sessionIdleTtlMs?: number;
  probeTimeoutMs?: number;
  shutdownTimeoutMs?: number;
};

const performanceNow = () => performance.now();
const idleFor = (c: UpstreamSessionContext) => c.now() - c.calls.lastActiveAt;

export const upstreamSessionMachine = setup({
  types: {
    context: {} as UpstreamSessionContext,
    events: {} as UpstreamSessionEvent,
    emitted: {} as UpstreamSessionEmitted,
    input: {} as UpstreamSessionInput,
  },
  actors: {
    connect: fromPromise<void, UpstreamSessionEffects>(({ input, signal }) => input.connect(signal)),
    probe: fromPromise<ProbeOutcome, { effects: UpstreamSessionEffects; method: ProbeMethod }>(({ input }) => input.effects.probe(input.method)),
    closeGracefully: fromPromise<void, UpstreamSessionEffects>(({ input }) => input.closeGracefully()),
    forceClose: fromPromise<void, UpstreamSessionEffects>(({ input }) => input.forceClose()),
  },
  actions: {
    recordClose: assign((_, params: { reason: string; cause: CloseCause }) => ({ closeReason: params.reason, closeCause: params.cause })),
    forgetDoneCall: ({ context, event }) => {
      if (event.type === "CALL_DONE") context.calls.inflight.delete(event.callId);
    },
    /** started calls enter the table; the session counts as used now */
    admitCalls: ({ context }, params: { calls: SessionCall[] }) => context.calls.admit(params.calls, context.now()),
    forgetAllCalls: ({ context }) => context.calls.inflight.clear(),
    startCalls: ({ context }, params: { calls: SessionCall[] }) => context.effects.startCalls(params.calls),
    failCalls: ({ context }, params: { calls: SessionCall[]; reason: string }) => context.effects.failCalls(params.calls, params.reason),
    abortCalls: ({ context }, params: { calls: SessionCall[]; reason: string }) => context.effects.abortCalls(params.calls, params.reason),
    stopTakingCalls: ({ context }) => context.effects.stopTakingCalls(),
    stopAccepting: ({ context }) => context.effects.stopAccepting(),
    giveUp: ({ context }, params: { reason: string }) => context.effects.giveUp(params.reason),
  },
  guards: {
    transportFailed: ({ event }) => event.type === "CALL_DONE" && event.transportFailed,
    hasCallsInFlight: ({ context }) => context.calls.inflight.size > 0,
    noCallsInFlight: ({ context }) => context.calls.inflight.size === 0,
    closeRequested: ({ context }) => context.closeCause !== null,
    hasQueuedCalls: ({ context }) => context.queued.length > 0,
    drainRequested: ({ context }) => context.drainRequested,
    /** a call came within idleValidation of now: not stale yet */
    usedWithinIdleValidation: ({ context }) => idleFor(context) < context.idleValidationMs,
    /** a call is in flight, or came within sessionIdleTtl of now */
    notIdleExpired: ({ context }) => context.calls.inflight.size > 0 || idleFor(context) < context.sessionIdleTtlMs,
    methodNotFoundWithStepsLeft: ({ context, event }) =>
      (event as { output?: ProbeOutcome }).output === "method_not_found" && context.probeStep < PROBE_METHODS.length - 1,
  },
  delays: {
    // Timers are not restarted per call (a re-entered state costs every call its timers): at
    // expiry a session used since is re-armed for what is left, so it goes stale exactly
    // idleValidation after its last call, and expires sessionIdleTtl after it.
    untilStale: ({ context }) => Math.max(0, context.calls.lastActiveAt + context.idleValidationMs - context.now()),
    untilIdleExpiry: ({ context }) => {
      const left = context.calls.lastActiveAt + context.sessionIdleTtlMs - context.now();
      // still busy past the TTL (a long call): look again a TTL later
      return left > 0 ? left : context.sessionIdleTtlMs;
    },
    probeTimeout: ({ context }) => context.probeTimeoutMs,
    shutdownTimeout: ({ context }) => context.shutdownTimeoutMs,
  },
}).createMachine({
  id: "upstreamSession",
  initial: "claiming",
  context: ({ input }) => ({
    queued: [],
    calls: new CallTable(),
    probeStep: 0,
    closeReason: "",
    closeCause: null,
    drainRequested: false,
    now: input.now ?? performanceNow,
    idleValidationMs: input.idleValidationMs ?? 60_000,
    sessionIdleTtlMs: input.sessionIdleTtlMs ?? 30 * 60_000,
    probeTimeoutMs: input.probeTimeoutMs ?? 5_000,
    shutdownTimeoutMs: input.shutdownTimeoutMs ?? 5_000,
    effects: input.effects,
  }),
  on: {
    // a cancelled call that has not started is answered at once; a started one is aborted
    CANCEL: {
      actions: [
        {
          type: "failCalls",
          params: ({ context, event }) => ({ calls: context.queued.filter((c) => c.requestId === event.requestId), reason: event.reason }),
        },
        assign({ queued: ({ context, event }) => context.queued.filter((c) => c.requestId !== event.requestId) }),
        {
          type: "abortCalls",
          params: ({ context, event }) => ({ calls: [...context.calls.inflight.values()].filter((c) => c.requestId === event.requestId), reason: event.reason }),
        },
      ],
    },
  },
  states: {
    claiming: {
      on: {
        CALL: { actions: assign({ queued: ({ context, event }) => [...context.queued, event.call] }) },
        // the record that matched may be stale by the time the claim is won: closed as soon as it starts
        CLOSE: { actions: assign({ closeReason: ({ event }) => event.reason, closeCause: ({ event }) => event.cause }) },
        // calls already waiting here arrived before the shutdown: they are served, then the actor drains
        DRAIN: [
          { guard: "hasQueuedCalls", actions: assign({ drainRequested: true }) },
          { actions: { type: "recordClose", params: { reason: "worker shutting down", cause: "shutdown" } } },
        ],
        CLAIMED: [{ guard: "closeRequested", target: "closing" }, { target: "open" }],
        CLAIM_LOST: "abandoned",
      },
    },
    open: {
      initial: "connecting",
      on: {
        CLOSE: { target: "closing", actions: assign({ closeReason: ({ event }) => event.reason, closeCause: ({ event }) => event.cause }) },
        DRAIN: [
          { guard: "hasCallsInFlight", target: "draining", actions: { type: "recordClose", params: { reason: "worker shutting down", cause: "shutdown" } } },
          { target: "closing", actions: { type: "recordClose", params: { reason: "worker shutting down", cause: "shutdown" } } },
        ],
        CALL_DONE: [
          { guard: "transportFailed", target: "closing", actions: ["forgetDoneCall", { type: "recordClose", params: { reason: "transport error during a call", cause: "transport_error" } }] },
          { actions: "forgetDoneCall" },
        ],
      },
      states: {
        connecting: {
          on: {
            CALL: { actions: assign({ queued: ({ context, event }) => [...context.queued, event.call] }) },
            DRAIN: { actions: assign({ drainRequested: true }) },
          },
          invoke: {
            src: "connect",
            input: ({ context }) => context.effects,
            onDone: { target: "ready" },
            onError: {
              target: "#upstreamSession.closing",
              actions: assign({ closeReason: ({ event }) => `cannot connect: ${shortErrorText(event.error)}`, closeCause: "connect_failed" }),
            },
          },
        },
        ready: {
          entry: [
            { type: "startCalls", params: ({ context }) => ({ calls: context.queued }) },
            { type: "admitCalls", params: ({ context }) => ({ calls: context.queued }) },
            assign({ queued: [] }),
            emit({ type: "ready" }),
          ],
          // a drain asked while connecting or probing: the calls that waited have just started
          always: {
            guard: "drainRequested",
            target: "#upstreamSession.draining",
            actions: { type: "recordClose", params: { reason: "worker shutting down", cause: "shutdown" } },
          },
          // Only incoming calls count as activity (each sets the table's lastActiveAt; the host takes them without a transition).
          type: "parallel",
          states: {
            expiry: {
              initial: "watching",
              states: {
                watching: {
                  after: {
                    untilIdleExpiry: [
                      { guard: "notIdleExpired", target: "watching", reenter: true },
                      { target: "#upstreamSession.closing", actions: { type: "recordClose", params: { reason: "idle expiry", cause: "idle" } } },
                    ],
                  },
                },
              },
            },
            validity: {
              initial: "fresh",
              states: {
                fresh: {
                  after: { untilStale: [{ guard: "usedWithinIdleValidation", target: "fresh", reenter: true }, { target: "stale" }] },
                  on: {
                    // what `takesCallAtOnce` lets the host do without this event
                    CALL: {
                      actions: [
                        { type: "startCalls", params: ({ event }) => ({ calls: [event.call] }) },
                        { type: "admitCalls", params: ({ event }) => ({ calls: [event.call] }) },
                      ],
                    },
                  },
                },
                stale: {
                  on: {
                    CALL: {
                      target: "#upstreamSession.open.validating",
                      actions: assign({ queued: ({ context, event }) => [...context.queued, event.call], probeStep: 0 }),
                    },
                  },
                },
              },
            },
          },
        },
        validating: {
          on: {
            CALL: { actions: assign({ queued: ({ context, event }) => [...context.queued, event.call] }) },
            DRAIN: { actions: assign({ drainRequested: true }) },
          },
          invoke: {
            src: "probe",
            input: ({ context }) => ({ effects: context.effects, method: PROBE_METHODS[context.probeStep]! }),
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
    // the worker stops: calls in flight finish (or shutdownTimeout passes), new ones go elsewhere
    draining: {
      entry: [
        "stopTakingCalls",
        { type: "failCalls", params: ({ context }) => ({ calls: context.queued, reason: context.closeReason }) },
        assign({ queued: [] }),
      ],
      always: { guard: "noCallsInFlight", target: "closing" },
      after: { shutdownTimeout: "closing" },
      on: {
        CALL: { actions: { type: "failCalls", params: ({ event }) => ({ calls: [event.call], reason: "the worker is shutting down" }) } },
        CALL_DONE: [
          { guard: "transportFailed", target: "closing", actions: "forgetDoneCall" },
          { actions: "forgetDoneCall" },
        ],
        CLOSE: { target: "closing", actions: assign({ closeReason: ({ event }) => event.reason, closeCause: ({ event }) => event.cause }) },
      },
    },
    closing: {
      entry: [
        "stopAccepting",
        emit(({ context }) => ({ type: "closing" as const, reason: context.closeReason })),
        { type: "failCalls", params: ({ context }) => ({ calls: context.queued, reason: context.closeReason }) },
        { type: "abortCalls", params: ({ context }) => ({ calls: [...context.calls.inflight.values()], reason: context.closeReason }) },
        "forgetAllCalls",
        assign({ queued: [] }),
      ],
      on: { CALL: { actions: { type: "failCalls", params: ({ event }) => ({ calls: [event.call], reason: "the session is closing" }) } } },
      invoke: { src: "closeGracefully", input: ({ context }) => context.effects, onDone: "closed", onError: "forcing" },
      after: { shutdownTimeout: "forcing" },
    },
    forcing: {
      on: { CALL: { actions: { type: "failCalls", params: ({ event }) => ({ calls: [event.call], reason: "the session is closing" }) } } },
      invoke: { src: "forceClose", input: ({ context }) => context.effects, onDone: "closed", onError: "gaveUp" },
      after: { shutdownTimeout: "gaveUp" },
    },
    gaveUp: {
      entry: { type: "giveUp", params: ({ context }) => ({ reason: context.closeReason }) },
      always: "closed",
    },
    closed: { type: "final" },
    /** lost the claim before it started: nothing was opened, nothing to close */
    abandoned: { type: "final" },
  },
});

export type UpstreamSessionMachine = typeof upstreamSessionMachine;
type Snapshot = SnapshotFrom<UpstreamSessionMachine>;

/**
 * True when the machine's CALL would only start the call and admit it to the table (ready and
 * fresh): the host does that itself, without a transition.
 */
export function takesCallAtOnce(snap: Snapshot): boolean {
  return snap.status === "active" && snap.matches({ open: { ready: { validity: "fresh" } } });
}

/** True when the machine's CALL_DONE would only forget the call (open, no transport failure): the host does that itself. */
export function endsCallAtOnce(snap: Snapshot, transportFailed: boolean): boolean {
  return !transportFailed && snap.status === "active" && snap.matches("open");
}

/** The short state name shown by snapshots: claiming, connecting, ready, validating, draining, closing, forcing, closed. */
export function stateName(value: unknown): string {
  if (typeof value === "string") return value;
  if (value && typeof value === "object") {
    const [k, v] = Object.entries(value)[0] ?? ["unknown", null];
    return k === "open" ? stateName(typeof v === "string" ? v : v ? Object.keys(v)[0] : "open") : k;
  }
  return "unknown";
}
