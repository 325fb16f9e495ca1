// The gateway pollers of one worker: one per enabled gateway it owns, each a small plain record
// driven by one schedule (a priority queue of due times and one timer) instead of an actor with
// its own timers, so ten thousand gateways cost ten thousand records, not ten thousand actors.
// Per gateway, two independent loops: health checks on their own interval (never gated by
// classification) and discovery at the base interval scaled by the gateway's tier. Discovery
// wakes at every slot of the base interval and reads the tier then, so a cold gateway whose
// classification is deleted or expires is back at 1× on the next slot. Effects (MCP client, KV,
// clock) are provided by the runtime; tests drive it on xstate's SimulatedClock.
import FlatQueue from "flatqueue";
import type { CatalogDiff } from "../protocol/catalog.ts";
import type { Tier } from "../protocol/classification.ts";
import type { GatewayStatus } from "../protocol/gateway.ts";
import { shortErrorText } from "./errorText.ts";
import { DISCOVERY_MULTIPLIER, delayToSlot, lastPollAt, phaseOf, slotAlreadyPolled, tierOf } from "./discovery.ts";

export type PollKind = "health" | "discovery";

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

/** The timer source: the host's real one, or a SimulatedClock in tests. */
export type SchedulerClock = { now(): number; setTimeout(fn: () => void, ms: number): unknown; clearTimeout(id: unknown): void };

export type PollEffects = {
  /** the stored discovery stamp (raw; only read until this worker has discovered the gateway itself) */
  readDiscoveryStamp(gid: string): Promise<unknown>;
  /** the classification as the worker last saw it (raw) */
  classification(): unknown;
  /**
   * A ping on the gateway's connection; rejects when the gateway does not answer. No signal: a
   * check is one request bounded by the poll timeout, so one in flight when its poller stops runs
   * out and its outcome is dropped (an AbortController and its listener per check cost more than
   * the ping's own work); `isPolling` tells a check still waiting for a poll slot not to start.
   */
  checkHealth(gid: string): Promise<void>;
  /** list everything, reconcile into the catalog, publish the change */
  discover(gid: string, signal: AbortSignal): Promise<DiscoveryOutcome>;
  /** records a successful discovery (`poll.<gid>.discovery`); a health check records nothing (see #publish) */
  recordDiscovery(gid: string, at: string, nextAt: string | null): void;
  writeStatus(gid: string, status: GatewayStatus): void;
};

export type SchedulerOptions = {
  timings: PollerTimings;
  unhealthyThreshold: number;
  clock: SchedulerClock;
  /** in [0, 1): the jitter source */
  random: () => number;
  effects: PollEffects;
};

/** How a poller starts: the stored status (a takeover continues it), and whether to discover at once (a gateway just added or changed). */
export type PollerStart = { status?: GatewayStatus | undefined; discoverNow?: boolean };

/** One gateway's poller: its state as data. */
type Poll = {
  readonly gid: string;
  readonly phase: number;
  stopped: boolean;
  health: GatewayStatus["health"];
  consecutiveFailures: number;
  lastSuccessAt: number | null;
  lastError: string | null;
  tools: number;
  prompts: number;
  resources: number;
  tier: Tier;
  healthStep: "waiting" | "checking";
  healthDueAt: number;
  discoveryStep: "waiting" | "deciding" | "discovering" | "debouncing";
  discoveryDueAt: number;
  /** the last discovery this poller completed (after one, it reads no stamp before a slot) */
  discoveredAt: number | null;
  /** when the last discovery ended (push-triggered ones are throttled by it) */
  discoveryEndedAt: number | null;
  pushPending: boolean;
  refreshWaiting: RefreshResponder[] | null;
  refreshInFlight: RefreshResponder[] | null;
  /** the controller of the discovery in flight (null between discoveries), aborted when the poller stops */
  polling: AbortController | null;
  /** last status handed to writeStatus; a new one is written only when it differs in a field readers act on */
  published: GatewayStatus | null;
  /** that status's last success (ms), to tell when it is STATUS_REFRESH_MS old */
  publishedSuccessAt: number | null;
};

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** Fields a reader acts on; the timestamps alone are not worth a write (the poller's address answers them live). */
const STATUS_FIELDS = ["health", "lastError", "consecutiveFailures", "tools", "prompts", "resources", "tier"] as const;

/**
 * After how long a stored status whose fields did not change is written again, so its
 * `lastSuccessAt` in KV is at most this (plus an interval) old for a healthy gateway: at 10,000
 * gateways and 60 s checks, a tenth of them a minute instead of every check.
 */
export const STATUS_REFRESH_MS = 10 * 60_000;

/**
 * Polls fall due on a grid of this many ms (a poll due within a tick runs at its end, at most this
 * late): one timer wake-up starts every poll of the tick, where at 10,000 gateways each of 167
 * checks a second woke the worker by itself. Far below the slots' jitter (up to 2 s).
 */
export const TICK_MS = 100;

export class PollScheduler {
  readonly #o: SchedulerOptions;
  readonly #polls = new Map<string, Poll>();
  /** due times; an entry whose poll moved on (stopped, rescheduled) is skipped when it comes up */
  readonly #health = new FlatQueue<Poll>();
  readonly #discovery = new FlatQueue<Poll>();
  #timer: unknown = null;
  #timerAt = Infinity;

  constructor(options: SchedulerOptions) {
    this.#o = options;
  }

  get size(): number {
    return this.#polls.size;
  }

  has(gid: string): boolean {
    return this.#polls.has(gid);
  }

  /** Starts polling a gateway: its first check at its next slot, its first discovery at once or at its slot. */
  start(gid: string, start: PollerStart = {}): void {
    if (this.#polls.has(gid)) return;
    const s = start.status;
    const p: Poll = {
      gid,
      phase: phaseOf(gid),
      stopped: false,
      health: s?.health ?? "unknown",
      consecutiveFailures: s?.consecutiveFailures ?? 0,
      lastSuccessAt: s?.lastSuccessAt ? Date.parse(s.lastSuccessAt) : null,
      lastError: s?.lastError ?? null,
      tools: s?.tools ?? 0,
      prompts: s?.prompts ?? 0,
      resources: s?.resources ?? 0,
      tier: s?.tier ?? "unclassified",
      healthStep: "waiting",
      healthDueAt: 0,
      discoveryStep: "waiting",
      discoveryDueAt: 0,
      discoveredAt: null,
      discoveryEndedAt: null,
      pushPending: false,
      refreshWaiting: null,
      refreshInFlight: null,
      polling: null,
      published: s ?? null,
      publishedSuccessAt: s?.lastSuccessAt ? Date.parse(s.lastSuccessAt) : null,
    };
    this.#polls.set(gid, p);
    // a new poller (start, takeover) waits for the gateway's slot, so polls stay spread
    this.#scheduleHealth(p, true);
    if (start.discoverNow) this.#discover(p);
    else this.#scheduleDiscovery(p, true);
  }

  /** Stops a poller; returns the manual refreshes it had not answered yet (the caller tells them why). */
  stop(gid: string): RefreshResponder[] {
    const p = this.#polls.get(gid);
    if (!p) return [];
    this.#polls.delete(gid);
    p.stopped = true;
    p.polling?.abort();
    return [...(p.refreshWaiting ?? []), ...(p.refreshInFlight ?? [])];
  }

  /** Stops every poller and the timer. */
  stopAll(): RefreshResponder[] {
    const pending = [...this.#polls.keys()].flatMap((gid) => this.stop(gid));
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = null;
    this.#timerAt = Infinity;
    return pending;
  }

  status(gid: string): GatewayStatus | undefined {
    const p = this.#polls.get(gid);
    return p && this.#statusOf(p);
  }

  /** The upstream said its lists changed: push beats poll (discover at once, unless one just ran). */
  listChanged(gid: string): void {
    const p = this.#polls.get(gid);
    if (!p) return;
    if (p.discoveryStep === "waiting") {
      const now = this.#o.clock.now();
      if (p.discoveryEndedAt !== null && now - p.discoveryEndedAt < this.#o.timings.listChangedDebounce) this.#debounce(p);
      else this.#discover(p);
    } else if (p.discoveryStep !== "debouncing") p.pushPending = true;
  }

  /** A manual refresh: discovers now (or right after the discovery running) and answers with its outcome. */
  refresh(gid: string, responder: RefreshResponder): boolean {
    const p = this.#polls.get(gid);
    if (!p) return false;
    (p.refreshWaiting ??= []).push(responder);
    if (p.discoveryStep === "waiting" || p.discoveryStep === "debouncing") this.#discover(p);
    return true;
  }

  // ---- the schedule ----

  #due(p: Poll, kind: PollKind, at: number): void {
    if (kind === "health") {
      p.healthDueAt = at;
      this.#health.push(p, at);
    } else {
      p.discoveryDueAt = at;
      this.#discovery.push(p, at);
    }
    const tick = Math.ceil(at / TICK_MS) * TICK_MS;
    if (tick < this.#timerAt) this.#arm(tick);
  }

  #arm(at: number): void {
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
    this.#timerAt = at;
    // setTimeout's delay is a 32-bit integer
    this.#timer = this.#o.clock.setTimeout(() => this.#fire(), Math.min(Math.max(0, at - this.#o.clock.now()), 2 ** 31 - 1));
  }

  #fire(): void {
    this.#timer = null;
    this.#timerAt = Infinity;
    const now = this.#o.clock.now();
    for (const [queue, kind] of [[this.#health, "health"], [this.#discovery, "discovery"]] as const) {
      while (queue.length > 0 && queue.peekValue()! <= now) {
        const at = queue.peekValue()!;
        const p = queue.pop()!;
        if (p.stopped) continue;
        if (kind === "health" && p.healthStep === "waiting" && p.healthDueAt === at) this.#healthDue(p);
        if (kind === "discovery" && p.discoveryDueAt === at) {
          if (p.discoveryStep === "waiting") this.#discoveryDue(p);
          else if (p.discoveryStep === "debouncing") this.#discover(p);
        }
      }
    }
    const next = Math.min(this.#health.peekValue() ?? Infinity, this.#discovery.peekValue() ?? Infinity);
    if (next < Infinity) this.#arm(Math.ceil(next / TICK_MS) * TICK_MS);
  }

  /** Jitter added to every slot: up to 5% of the period, at most 2 s. */
  #jitter(period: number): number {
    return Math.floor(this.#o.random() * Math.min(period / 20, 2000));
  }

  /** next slot; `first` (a poller starting) takes the very next one, otherwise at least half a period away */
  #scheduleHealth(p: Poll, first = false): void {
    const now = this.#o.clock.now();
    const { health: period, backoffMax } = this.#o.timings;
    const threshold = this.#o.unhealthyThreshold;
    const delay =
      p.health === "unhealthy"
        ? // exponential backoff once unhealthy: 2×, 4×, 8× … the interval, capped
          Math.min(period * 2 ** (p.consecutiveFailures - threshold + 1), Math.max(backoffMax, period))
        : delayToSlot(now, period, p.phase, first ? 0 : period / 2) + this.#jitter(period);
    p.healthStep = "waiting";
    this.#due(p, "health", now + delay);
  }

  /** next slot of the base interval (whether it is due for the gateway's tier is decided then) */
  #scheduleDiscovery(p: Poll, first = false): void {
    const now = this.#o.clock.now();
    const period = this.#o.timings.discovery;
    this.#due(p, "discovery", now + delayToSlot(now, period, p.phase, first ? 0 : period / 2) + this.#jitter(period));
  }

  #debounce(p: Poll): void {
    p.discoveryStep = "debouncing";
    this.#due(p, "discovery", this.#o.clock.now() + this.#o.timings.listChangedDebounce);
  }

  // ---- health ----

  /**
   * A check reads and writes no state: a new poller (takeover) waits for the gateway's slot, which
   * is the same on every worker, so at worst a handover checks one slot twice; and a successful
   * check is written only when the status changed (or rarely, see STATUS_REFRESH_MS).
   */
  #healthDue(p: Poll): void {
    p.healthStep = "checking";
    this.#o.effects.checkHealth(p.gid).then(
      () => {
        if (p.stopped) return;
        this.#succeed(p);
        this.#scheduleHealth(p);
        this.#publish(p);
      },
      (err: unknown) => {
        if (p.stopped) return;
        this.#fail(p, err);
        this.#scheduleHealth(p);
        this.#publish(p);
      },
    );
  }

  // ---- discovery ----

  #discoveryDue(p: Poll): void {
    // after its own first discovery the poller knows when it last discovered: no stamp to read
    if (p.discoveredAt !== null) return this.#decide(p, p.discoveredAt);
    p.discoveryStep = "deciding";
    this.#o.effects.readDiscoveryStamp(p.gid).then(
      (stamp) => void (p.stopped || this.#decide(p, lastPollAt(stamp, this.#o.clock.now()))),
      () => {
        if (p.stopped) return;
        // state unreadable: discover anyway, at the base interval (fail open)
        p.tier = "unclassified";
        this.#discover(p);
      },
    );
  }

  #decide(p: Poll, last: number | null): void {
    if (p.refreshWaiting?.length) return this.#discover(p);
    if (p.pushPending) return this.#debounce(p);
    const now = this.#o.clock.now();
    // judged by the tier now, not the one of the previous slot
    p.tier = tierOf(this.#o.effects.classification(), p.gid, now);
    const base = this.#o.timings.discovery;
    // an unhealthy gateway is probed by health checks (with backoff) only
    if (p.health === "unhealthy" || slotAlreadyPolled(last, now, base * DISCOVERY_MULTIPLIER[p.tier], base)) {
      p.discoveryStep = "waiting";
      this.#scheduleDiscovery(p);
      this.#publish(p);
      return;
    }
    this.#discover(p);
  }

  #discover(p: Poll): void {
    p.discoveryStep = "discovering";
    p.refreshInFlight = p.refreshWaiting;
    p.refreshWaiting = null;
    p.pushPending = false;
    // the discovery's own controller, dropped when it ends: nothing per poller is held between discoveries
    const polling = (p.polling = new AbortController());
    this.#o.effects.discover(p.gid, polling.signal).then(
      (outcome) => {
        if (p.stopped) return;
        p.polling = null;
        const now = this.#o.clock.now();
        p.discoveryEndedAt = now;
        p.discoveredAt = now;
        this.#succeed(p);
        ({ tools: p.tools, prompts: p.prompts, resources: p.resources } = outcome.counts);
        this.#scheduleDiscovery(p);
        // the slot at which the next discovery falls due for the current tier
        const base = this.#o.timings.discovery;
        this.#o.effects.recordDiscovery(p.gid, iso(p.lastSuccessAt)!, iso(p.discoveryDueAt + base * DISCOVERY_MULTIPLIER[p.tier] - base));
        this.#answerRefresh(p, (r) => r.resolve(outcome));
        this.#publish(p);
        this.#settle(p);
      },
      (err: unknown) => {
        if (p.stopped) return;
        p.polling = null;
        p.discoveryEndedAt = this.#o.clock.now();
        this.#fail(p, err);
        this.#scheduleDiscovery(p);
        this.#answerRefresh(p, (r) => r.reject(err));
        this.#publish(p);
        this.#settle(p);
      },
    );
  }

  /** after a discovery: refreshes that came meanwhile go next, then notices (debounced), else the next slot */
  #settle(p: Poll): void {
    if (p.refreshWaiting?.length) this.#discover(p);
    else if (p.pushPending) this.#debounce(p);
    else p.discoveryStep = "waiting";
  }

  #answerRefresh(p: Poll, answer: (r: RefreshResponder) => void): void {
    for (const r of p.refreshInFlight ?? []) answer(r);
    p.refreshInFlight = null;
  }

  // ---- shared ----

  #succeed(p: Poll): void {
    p.health = "healthy";
    p.consecutiveFailures = 0;
    p.lastError = null;
    p.lastSuccessAt = this.#o.clock.now();
  }

  #fail(p: Poll, err: unknown): void {
    p.consecutiveFailures++;
    p.lastError = shortErrorText(err);
    if (p.consecutiveFailures >= this.#o.unhealthyThreshold) p.health = "unhealthy";
  }

  /** whether the status last handed to writeStatus differs from the poller's in a field readers act on, or its last success is STATUS_REFRESH_MS old */
  #outdated(p: Poll): boolean {
    const a = p.published;
    if (!a || STATUS_FIELDS.some((k) => a[k] !== p[k])) return true;
    if (p.lastSuccessAt === null) return false;
    return p.publishedSuccessAt === null || p.lastSuccessAt - p.publishedSuccessAt >= STATUS_REFRESH_MS;
  }

  #statusOf(p: Poll): GatewayStatus {
    return {
      health: p.health,
      lastSuccessAt: iso(p.lastSuccessAt),
      lastError: p.lastError,
      consecutiveFailures: p.consecutiveFailures,
      tools: p.tools,
      prompts: p.prompts,
      resources: p.resources,
      tier: p.tier,
      nextPollAt: iso(p.healthDueAt || null),
    };
  }

  /** hands the status to `writeStatus` when a field readers act on changed, or the stored one's last success is many intervals old */
  #publish(p: Poll): void {
    if (!this.#outdated(p)) return;
    const status = this.#statusOf(p);
    p.published = status;
    p.publishedSuccessAt = p.lastSuccessAt;
    this.#o.effects.writeStatus(p.gid, status);
  }
}
