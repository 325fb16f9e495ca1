// A leader lease in a KV key, without trusting clocks (ARCHITECTURE.md "Leases without
// trusting clocks"), plus the leader's periodic fenced duty. Every KV operation and the
// monotonic clock are provided by the host, so the same machine runs on a SimulatedClock.
//
// Fencing. The duty's guarded data lives in its own key, and KV compare-and-swap only
// checks the key being written, so the fence works through that key's revision:
//   - a leader writes the guarded key only at the revision it read *before* a successful
//     lease renewal (prepare → renew → commit);
//   - a follower, before taking the lease over, bumps the guarded key's revision (rewrites
//     it unchanged) after it saw the lease revision it is about to replace.
// So if anyone took the lease over between the leader's renewal and its commit, that
// takeover's fence bump landed in between too, and the commit's compare-and-swap fails.
// Clocks only decide *when* to act (take over, step down), never whether a write is safe.
import { assign, emit, fromCallback, fromPromise, raise, setup } from "xstate";

/** What a watch of the lease key reports: its revision, and whether it holds a value (not deleted). */
export type LeaseSeen = { revision: number; live: boolean };

export type LeaseEvent = ({ type: "LEASE.SEEN" } & LeaseSeen) | { type: "STOP" } | { type: "RENEWED" };

export type LeaseEmitted =
  | { type: "leader"; revision: number }
  | { type: "steppedDown"; reason: string; revision: number };

export type LeaseInput = {
  ttlMs: number;
  /** period of the leader's duty */
  dutyIntervalMs: number;
  /** monotonic milliseconds: performance.now for real, the SimulatedClock in tests */
  now: () => number;
  /** monotonic time before which the first duty must not run (e.g. until usage was heard for a while) */
  firstDutyAt: number;
};

type LeaseContext = LeaseInput & {
  seen: LeaseSeen | null;
  /** when `seen` was first observed, on our monotonic clock */
  seenAt: number;
  /** the lease revision we hold (0: none) */
  held: number;
  /** when the write that produced `held` was sent: the term runs from there */
  heldFrom: number;
  /** when the lease write in flight was sent */
  sentAt: number;
  /** the duty's next write, computed before the renewal that fences it */
  prepared: { value: unknown } | null;
  dutyDue: boolean;
  /** the current duty's commit was refused once and is being prepared again */
  dutyRetried: boolean;
  stopRequested: boolean;
};

/** Safety margin for clock-rate drift between workers: the holder gives up a fifth of the TTL early. */
export const marginOf = (ttlMs: number) => ttlMs / 5;
const termOf = (ttlMs: number) => ttlMs - marginOf(ttlMs);

const unprovided = (name: string) => () => {
  throw new Error(`${name} must be provided by the host`);
};

const leaseSetup = setup({
  types: {
    context: {} as LeaseContext,
    input: {} as LeaseInput,
    events: {} as LeaseEvent,
    emitted: {} as LeaseEmitted,
  },
  actors: {
    /** sends LEASE.SEEN now (revision 0, not live, when the key never existed) and on every change */
    watchLease: fromCallback<LeaseEvent>(unprovided("watchLease")),
    /** bumps the guarded key's revision if the lease is still at `revision`; false when the lease moved */
    fence: fromPromise<boolean, { revision: number }>(unprovided("fence")),
    /** compare-and-swap claim at the revision seen (0 or a delete marker's revision when free); null when lost */
    acquire: fromPromise<number | null, { revision: number }>(unprovided("acquire")),
    /** compare-and-swap renewal at the held revision; null when someone else holds the lease */
    renew: fromPromise<number | null, { revision: number }>(unprovided("renew")),
    /** compare-and-swap delete at the held revision */
    release: fromPromise<void, { revision: number }>(unprovided("release")),
    /** reads the guarded key's revision and computes the next write (before the renewal) */
    prepareDuty: fromPromise<unknown, void>(unprovided("prepareDuty")),
    /** writes at the revision read in prepare; false when the key moved since (a takeover's fence) */
    commitDuty: fromPromise<boolean, { prepared: unknown; revision: number }>(unprovided("commitDuty")),
  },
  delays: {
    standstill: ({ context }) => Math.max(0, context.seenAt + context.ttlMs - context.now()),
    renewEvery: ({ context }) => context.ttlMs / 3,
    untilTermEnds: ({ context }) => Math.max(0, context.heldFrom + termOf(context.ttlMs) - context.now()),
    untilFirstDuty: ({ context }) => Math.max(0, context.firstDutyAt - context.now()),
    dutyEvery: ({ context }) => context.dutyIntervalMs,
    retryAfter: ({ context }) => context.ttlMs / 6,
  },
  guards: {
    leaseGone: ({ event }) => event.type === "LEASE.SEEN" && !event.live,
    leaseChanged: ({ context, event }) => event.type === "LEASE.SEEN" && event.revision !== context.seen?.revision,
    lost: (_, params: { output: number | null | boolean }) => params.output === null || params.output === false,
    replyTooLate: ({ context }) => context.now() - context.sentAt >= termOf(context.ttlMs),
    dutyDue: ({ context }) => context.dutyDue,
    hasPrepared: ({ context }) => context.prepared !== null,
    /**
     * A refused commit with the lease still held: a follower that lost the race for the lease
     * landed its fence after our read. Prepared again at once (not a whole interval later);
     * the renewal in between steps a deposed leader down instead.
     */
    firstRefusal: ({ context, event }) => (event as { output?: boolean }).output === false && !context.dutyRetried,
    stopRequested: ({ context }) => context.stopRequested,
  },
  actions: {
    noteSeen: assign(({ context, event }) =>
      event.type === "LEASE.SEEN" ? { seen: { revision: event.revision, live: event.live }, seenAt: context.now() } : {},
    ),
    forgetSeen: assign({ seen: null }),
    noteSent: assign({ sentAt: ({ context }) => context.now() }),
    markDutyDue: assign({ dutyDue: true }),
    clearDutyDue: assign({ dutyDue: false }),
    dropPrepared: assign({ prepared: null }),
    requestStop: assign({ stopRequested: true }),
  },
});

export const leaderLeaseMachine = leaseSetup.createMachine({
  id: "lease",
  context: ({ input }) => ({
    ...input,
    seen: null,
    seenAt: 0,
    held: 0,
    heldFrom: 0,
    sentAt: 0,
    prepared: null,
    dutyDue: false,
    dutyRetried: false,
    stopRequested: false,
  }),
  initial: "follower",
  states: {
    follower: {
      initial: "watching",
      always: { guard: "stopRequested", target: "stopped" },
      on: { STOP: "stopped" },
      states: {
        watching: {
          entry: "forgetSeen",
          invoke: { src: "watchLease" },
          initial: "unknown",
          on: {
            "LEASE.SEEN": [
              { guard: "leaseGone", target: "#lease.acquiring", actions: "noteSeen" },
              // a new revision restarts the full-TTL standstill wait
              { guard: "leaseChanged", target: ".waiting", actions: "noteSeen" },
            ],
          },
          states: {
            /** nothing observed yet: never take over blind */
            unknown: {},
            waiting: { after: { standstill: "#lease.acquiring" } },
          },
        },
        cooling: { after: { retryAfter: "watching" } },
      },
    },
    acquiring: {
      initial: "fencing",
      on: { STOP: { actions: "requestStop" } },
      states: {
        fencing: {
          invoke: {
            src: "fence",
            input: ({ context }) => ({ revision: context.seen?.revision ?? 0 }),
            onDone: [
              { guard: { type: "lost", params: ({ event }) => ({ output: event.output }) }, target: "#lease.follower" },
              { target: "claiming" },
            ],
            onError: "#lease.follower.cooling",
          },
        },
        claiming: {
          entry: "noteSent",
          invoke: {
            src: "acquire",
            input: ({ context }) => ({ revision: context.seen?.revision ?? 0 }),
            onDone: [
              { guard: { type: "lost", params: ({ event }) => ({ output: event.output }) }, target: "#lease.follower.cooling" },
              { target: "#lease.leader", actions: assign({ held: ({ event }) => event.output!, heldFrom: ({ context }) => context.sentAt }) },
            ],
            onError: "#lease.follower.cooling",
          },
        },
      },
    },
    leader: {
      type: "parallel",
      entry: emit(({ context }) => ({ type: "leader" as const, revision: context.held })),
      exit: ["dropPrepared", "clearDutyDue"],
      always: { guard: "stopRequested", target: "releasing" },
      on: { STOP: "releasing" },
      states: {
        term: {
          initial: "valid",
          states: {
            valid: {
              // measured from when the last successful renewal was *sent*
              after: {
                untilTermEnds: {
                  target: "#lease.steppingDown",
                  actions: emit(({ context }) => ({
                    type: "steppedDown" as const,
                    reason: "not renewed within the TTL minus the margin",
                    revision: context.held,
                  })),
                },
              },
              on: { RENEWED: { target: "valid", reenter: true } },
            },
          },
        },
        schedule: {
          initial: "first",
          states: {
            first: { after: { untilFirstDuty: "due" } },
            due: { entry: "markDutyDue", always: "waiting" },
            waiting: { after: { dutyEvery: "due" } },
          },
        },
        work: {
          initial: "idle",
          states: {
            idle: {
              always: { guard: "dutyDue", target: "preparing" },
              after: { renewEvery: "renewing" },
            },
            // every renewal; after prepare it is the one that makes the commit fenced
            renewing: {
              entry: "noteSent",
              invoke: {
                src: "renew",
                input: ({ context }) => ({ revision: context.held }),
                onDone: [
                  {
                    guard: { type: "lost", params: ({ event }) => ({ output: event.output }) },
                    target: "#lease.steppingDown",
                    actions: emit(({ context }) => ({ type: "steppedDown" as const, reason: "the lease was taken over", revision: context.held })),
                  },
                  {
                    guard: "replyTooLate",
                    target: "#lease.steppingDown",
                    actions: emit(({ context }) => ({ type: "steppedDown" as const, reason: "renewal answered too late", revision: context.held })),
                  },
                  {
                    target: "renewed",
                    actions: [assign({ held: ({ event }) => event.output!, heldFrom: ({ context }) => context.sentAt }), raise({ type: "RENEWED" })],
                  },
                ],
                // transient (NATS unreachable): retry at the next tick; the term timer bounds it
                onError: { target: "idle", actions: "dropPrepared" },
              },
            },
            renewed: { always: [{ guard: "hasPrepared", target: "committing" }, { target: "idle" }] },
            preparing: {
              entry: "clearDutyDue",
              invoke: {
                src: "prepareDuty",
                onDone: { target: "renewing", actions: assign({ prepared: ({ event }) => ({ value: event.output }) }) },
                onError: "idle",
              },
            },
            committing: {
              invoke: {
                src: "commitDuty",
                input: ({ context }) => ({ prepared: context.prepared?.value, revision: context.held }),
                onDone: [
                  { guard: "firstRefusal", target: "preparing", actions: assign({ dutyRetried: true }) },
                  { target: "idle", actions: assign({ dutyRetried: false }) },
                ],
                onError: { target: "idle", actions: assign({ dutyRetried: false }) },
              },
              exit: "dropPrepared",
            },
          },
        },
      },
    },
    steppingDown: {
      // if we still hold it (e.g. NATS was slow), release so a follower takes over at once
      invoke: {
        src: "release",
        input: ({ context }) => ({ revision: context.held }),
        onDone: [{ guard: "stopRequested", target: "stopped" }, { target: "follower" }],
        onError: [{ guard: "stopRequested", target: "stopped" }, { target: "follower" }],
      },
      on: { STOP: { actions: "requestStop" } },
      exit: assign({ held: 0 }),
    },
    releasing: {
      invoke: {
        src: "release",
        input: ({ context }) => ({ revision: context.held }),
        onDone: "stopped",
        onError: "stopped",
      },
      exit: assign({ held: 0 }),
    },
    stopped: { type: "final" },
  },
});
