// The gateway poller: one per enabled gateway in the cluster, hosted by the worker that owns
// the gateway's poll lease. Two parallel regions: health checks on their own interval (never
// gated by classification) and discovery at the base interval scaled by the gateway's tier.
// Discovery wakes at every slot of the base interval and reads the classification then, so a
// cold gateway whose classification is deleted or expires is back at 1× on the next slot.
// Effects (MCP client, KV, clock) are provided by the runtime.
import { assign, enqueueActions, fromPromise, setup } from "xstate";
import type { CatalogDiff } from "../protocol/catalog.ts";
import type { Tier } from "../protocol/classification.ts";
import type { GatewayStatus } from "../protocol/gateway.ts";
import { shortErrorText } from "./errorText.ts";
import { DISCOVERY_MULTIPLIER, delayToSlot, lastPollAt, phaseOf, slotAlreadyPolled, tierOf } from "./discovery.ts";

export type PollKind = "health" | "discovery";

/** What the poller reads before a scheduled poll: the stamps and the classification, raw. */
export type PollState = { health: unknown; discovery: unknown; classification: unknown };

export type DiscoveryOutcome = {
  changed: boolean;
  hash: string;
  diff: CatalogDiff;
  counts: { tools: number; prompts: number; resources: number };
};

/** Someone waiting for a manual refresh's result. */
export type RefreshResponder = { resolve(outcome: DiscoveryOutcome): void; reject(err: unknown): void };

export type PollerTimings = {
  health: number;
  discovery: number;
  listChangedDebounce: number;
  /** cap of the exponential backoff of an unhealthy gateway */
  backoffMax: number;
};

export type PollerInput = {
  gid: string;
  timings: PollerTimings;
  unhealthyThreshold: number;
  /** wall-clock milliseconds; the host's clock (a SimulatedClock's in tests) */
  now: () => number;
  /** in [0, 1): the jitter source */
  random: () => number;
  /** the stored status, so a poller taking over continues it instead of starting from "unknown" */
  status?: GatewayStatus | undefined;
  /** discover right away instead of at the gateway's next slot (a gateway was just added or changed) */
  discoverNow?: boolean;
};

type Context = PollerInput & {
  phase: number;
  health: GatewayStatus["health"];
  consecutiveFailures: number;
  lastSuccessAt: string | null;
  lastError: string | null;
  counts: DiscoveryOutcome["counts"];
  tier: Tier;
  healthDelay: number;
  discoveryDelay: number;
  nextHealthAt: number | null;
  /** this poller ran a health check already (its slots are its own since) */
  checkedHere: boolean;
  /** last status handed to writeStatus; a new one is written only when it differs in a field readers act on */
  published: GatewayStatus | null;
  refreshWaiting: RefreshResponder[];
  refreshInFlight: RefreshResponder[];
  pushPending: boolean;
  /** when the last discovery ended (push-triggered ones are throttled by it) */
  lastDiscoveryEndedAt: number | null;
};

export type PollerEvent = { type: "LIST_CHANGED" } | { type: "REFRESH"; responder: RefreshResponder };

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** Jitter added to every slot: up to 5% of the period, at most 2 s. */
const jitter = (c: Context, period: number) => Math.floor(c.random() * Math.min(period / 20, 2000));

const discoveryPeriod = (c: Context) => c.timings.discovery * DISCOVERY_MULTIPLIER[c.tier];

export function statusOf(c: Context): GatewayStatus {
  return {
    health: c.health,
    lastSuccessAt: c.lastSuccessAt,
    lastError: c.lastError,
    consecutiveFailures: c.consecutiveFailures,
    ...c.counts,
    tier: c.tier,
    nextPollAt: iso(c.nextHealthAt),
  };
}

/** Fields a reader acts on; the timestamps alone are not worth a write (poll stamps carry them). */
function statusDiffers(a: GatewayStatus | null, b: GatewayStatus): boolean {
  if (!a) return true;
  return (["health", "lastError", "consecutiveFailures", "tools", "prompts", "resources", "tier"] as const).some((k) => a[k] !== b[k]);
}

const notProvided = <T, I = { gid: string }>(what: string) =>
  fromPromise<T, I>(async () => {
    throw new Error(`${what} is not provided`);
  });

const poller = setup({
  types: {
    input: {} as PollerInput,
    context: {} as Context,
    events: {} as PollerEvent,
  },
  actors: {
    /** `kind`: the region asking; only its stamp need be read (the other may come back undefined) */
    readPollState: notProvided<PollState, { gid: string; kind: PollKind }>("readPollState"),
    /** initialize + ping; rejects when the gateway does not answer */
    checkHealth: notProvided<void>("checkHealth"),
    /** list everything, reconcile into the catalog, publish the change */
    discover: notProvided<DiscoveryOutcome>("discover"),
  },
  actions: {
    /** records a successful poll (`poll.<gid>.<kind>`) */
    recordPoll: (_, _params: { kind: PollKind; at: string; nextAt: string | null }) => {},
    writeStatus: (_, _params: GatewayStatus) => {},
    succeed: assign(({ context }) => ({
      health: "healthy" as const,
      consecutiveFailures: 0,
      lastError: null,
      lastSuccessAt: iso(context.now()),
    })),
    fail: assign(({ context }, params: { error: unknown }) => {
      const consecutiveFailures = context.consecutiveFailures + 1;
      return {
        consecutiveFailures,
        lastError: shortErrorText(params.error),
        health: consecutiveFailures >= context.unhealthyThreshold ? ("unhealthy" as const) : context.health,
      };
    }),
    /** next slot; `first` (a poller starting) takes the very next one, otherwise at least half a period away */
    scheduleHealth: assign(({ context: c }, params: { first?: boolean } | undefined) => {
      const now = c.now();
      const p = c.timings.health;
      const healthDelay =
        c.health === "unhealthy"
          ? // exponential backoff once unhealthy: 2×, 4×, 8× … the interval, capped
            Math.min(p * 2 ** (c.consecutiveFailures - c.unhealthyThreshold + 1), Math.max(c.timings.backoffMax, p))
          : delayToSlot(now, p, c.phase, params?.first ? 0 : p / 2) + jitter(c, p);
      return { healthDelay, nextHealthAt: now + healthDelay };
    }),
    /** next slot of the base interval (whether it is due for the gateway's tier is decided then) */
    scheduleDiscovery: assign(({ context: c }, params: { first?: boolean } | undefined) => {
      const p = c.timings.discovery;
      return { discoveryDelay: delayToSlot(c.now(), p, c.phase, params?.first ? 0 : p / 2) + jitter(c, p) };
    }),
    /** hands the status to `writeStatus` only when a field readers act on changed */
    publishStatus: enqueueActions(({ context, enqueue }) => {
      const status = statusOf(context);
      if (!statusDiffers(context.published, status)) return;
      enqueue.assign({ published: status });
      // setup() cannot type a reference to a sibling action; it is resolved by name at run time
      enqueue({ type: "writeStatus", params: status } as never);
    }),
    addRefresh: assign({
      refreshWaiting: ({ context, event }) => (event.type === "REFRESH" ? [...context.refreshWaiting, event.responder] : context.refreshWaiting),
    }),
    markPush: assign({ pushPending: true }),
    startDiscovery: assign(({ context }) => ({ refreshInFlight: context.refreshWaiting, refreshWaiting: [], pushPending: false })),
    endDiscovery: assign({ lastDiscoveryEndedAt: ({ context }) => context.now() }),
    answerRefresh: ({ context }, params: { outcome?: DiscoveryOutcome; error?: unknown }) => {
      for (const r of context.refreshInFlight) {
        if (params.outcome) r.resolve(params.outcome);
        else r.reject(params.error);
      }
    },
    clearRefresh: assign({ refreshInFlight: [] }),
    readTier: assign({ tier: ({ context }, params: { state: PollState }) => tierOf(params.state.classification, context.gid, context.now()) }),
    /** the classification could not be read: fail open */
    unclassified: assign({ tier: "unclassified" as const }),
  },
  guards: {
    discoverNow: ({ context }) => context.discoverNow === true,
    isUnhealthy: ({ context }) => context.health === "unhealthy",
    checkedHere: ({ context }) => context.checkedHere,
    refreshWaiting: ({ context }) => context.refreshWaiting.length > 0,
    pushPending: ({ context }) => context.pushPending,
    discoveredWithinDebounce: ({ context: c }) => c.lastDiscoveryEndedAt !== null && c.now() - c.lastDiscoveryEndedAt < c.timings.listChangedDebounce,
    healthSlotDone: ({ context: c }, params: { state: PollState }) =>
      c.health !== "unhealthy" && slotAlreadyPolled(lastPollAt(params.state.health, c.now()), c.now(), c.timings.health),
    /** judged by the tier in the state just read, not the one of the previous slot */
    discoverySlotDone: ({ context: c }, params: { state: PollState }) =>
      slotAlreadyPolled(
        lastPollAt(params.state.discovery, c.now()),
        c.now(),
        c.timings.discovery * DISCOVERY_MULTIPLIER[tierOf(params.state.classification, c.gid, c.now())],
        c.timings.discovery,
      ),
  },
  delays: {
    healthDelay: ({ context }) => context.healthDelay,
    discoveryDelay: ({ context }) => context.discoveryDelay,
    listChangedDebounce: ({ context }) => context.timings.listChangedDebounce,
  },
});

export const pollerMachine = poller.createMachine({
  id: "poller",
  type: "parallel",
  context: ({ input }) => ({
    ...input,
    phase: phaseOf(input.gid),
    health: input.status?.health ?? "unknown",
    consecutiveFailures: input.status?.consecutiveFailures ?? 0,
    lastSuccessAt: input.status?.lastSuccessAt ?? null,
    lastError: input.status?.lastError ?? null,
    counts: {
      tools: input.status?.tools ?? 0,
      prompts: input.status?.prompts ?? 0,
      resources: input.status?.resources ?? 0,
    },
    tier: input.status?.tier ?? "unclassified",
    healthDelay: 0,
    discoveryDelay: 0,
    nextHealthAt: null,
    checkedHere: false,
    published: input.status ?? null,
    refreshWaiting: [],
    refreshInFlight: [],
    pushPending: false,
    lastDiscoveryEndedAt: null,
  }),
  states: {
    health: {
      initial: "starting",
      states: {
        // a new poller (start, takeover) waits for the gateway's slot, so polls stay spread
        starting: { always: { target: "waiting", actions: { type: "scheduleHealth", params: { first: true } } } },
        deciding: {
          invoke: {
            src: "readPollState",
            input: ({ context }) => ({ gid: context.gid, kind: "health" as const }),
            onDone: [
              // another worker already ran this slot's check: wait for the next slot
              { guard: { type: "healthSlotDone", params: ({ event }) => ({ state: event.output }) }, target: "waiting", actions: "scheduleHealth" },
              { target: "checking" },
            ],
            // state unreadable: check anyway (fail open)
            onError: { target: "checking" },
          },
        },
        checking: {
          entry: assign({ checkedHere: true }),
          invoke: {
            src: "checkHealth",
            input: ({ context }) => ({ gid: context.gid }),
            onDone: {
              target: "waiting",
              actions: [
                "succeed",
                "scheduleHealth",
                { type: "recordPoll", params: ({ context }) => ({ kind: "health" as const, at: context.lastSuccessAt!, nextAt: iso(context.nextHealthAt) }) },
                "publishStatus",
              ],
            },
            onError: {
              target: "waiting",
              actions: [{ type: "fail", params: ({ event }) => ({ error: event.error }) }, "scheduleHealth", "publishStatus"],
            },
          },
        },
        // only a new poller's first slot may have been checked by the worker that polled before
        // it; after that this poller is the only one, and a check costs one ping and nothing else
        waiting: { after: { healthDelay: [{ guard: "checkedHere", target: "checking" }, { target: "deciding" }] } },
      },
    },
    discovery: {
      initial: "starting",
      on: {
        REFRESH: { actions: "addRefresh" },
        LIST_CHANGED: { actions: "markPush" },
      },
      states: {
        starting: {
          always: [{ guard: "discoverNow", target: "discovering" }, { target: "waiting", actions: { type: "scheduleDiscovery", params: { first: true } } }],
        },
        deciding: {
          invoke: {
            src: "readPollState",
            input: ({ context }) => ({ gid: context.gid, kind: "discovery" as const }),
            onDone: [
              { guard: "refreshWaiting", target: "discovering" },
              { guard: "pushPending", target: "debouncing" },
              // an unhealthy gateway is probed by health checks (with backoff) only
              {
                guard: "isUnhealthy",
                target: "waiting",
                actions: [{ type: "readTier", params: ({ event }) => ({ state: event.output }) }, "scheduleDiscovery", "publishStatus"],
              },
              {
                guard: { type: "discoverySlotDone", params: ({ event }) => ({ state: event.output }) },
                target: "waiting",
                actions: [{ type: "readTier", params: ({ event }) => ({ state: event.output }) }, "scheduleDiscovery", "publishStatus"],
              },
              { target: "discovering", actions: [{ type: "readTier", params: ({ event }) => ({ state: event.output }) }] },
            ],
            // state unreadable: discover anyway, at the base interval (fail open)
            onError: { target: "discovering", actions: "unclassified" },
          },
        },
        discovering: {
          entry: "startDiscovery",
          invoke: {
            src: "discover",
            input: ({ context }) => ({ gid: context.gid }),
            onDone: {
              target: "settling",
              actions: [
                "endDiscovery",
                "succeed",
                assign({ counts: ({ event }) => event.output.counts }),
                "scheduleDiscovery",
                {
                  type: "recordPoll",
                  // the slot at which the next discovery falls due for the current tier
                  params: ({ context: c }) => ({
                    kind: "discovery" as const,
                    at: c.lastSuccessAt!,
                    nextAt: iso(c.now() + c.discoveryDelay + discoveryPeriod(c) - c.timings.discovery),
                  }),
                },
                { type: "answerRefresh", params: ({ event }) => ({ outcome: event.output }) },
                "clearRefresh",
                "publishStatus",
              ],
            },
            onError: {
              target: "settling",
              actions: [
                "endDiscovery",
                { type: "fail", params: ({ event }) => ({ error: event.error }) },
                "scheduleDiscovery",
                { type: "answerRefresh", params: ({ event }) => ({ error: event.error }) },
                "clearRefresh",
                "publishStatus",
              ],
            },
          },
        },
        settling: {
          always: [{ guard: "refreshWaiting", target: "discovering" }, { guard: "pushPending", target: "debouncing" }, { target: "waiting" }],
        },
        waiting: {
          on: {
            REFRESH: { target: "discovering", actions: "addRefresh" },
            // push beats poll: discover at once, unless one just ran (then at the end of the debounce window)
            LIST_CHANGED: [{ guard: "discoveredWithinDebounce", target: "debouncing" }, { target: "discovering" }],
          },
          after: { discoveryDelay: "deciding" },
        },
        // notices right after a discovery are collected into one discovery at the end of the window
        debouncing: {
          on: {
            REFRESH: { target: "discovering", actions: "addRefresh" },
            LIST_CHANGED: {},
          },
          after: { listChangedDebounce: "discovering" },
        },
      },
    },
  },
});
