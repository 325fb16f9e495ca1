import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createActor, SimulatedClock } from "xstate";
import { endsCallAtOnce, stateName, takesCallAtOnce, upstreamSessionMachine, type ProbeMethod, type ProbeOutcome, type UpstreamSessionEffects } from "../actors/upstreamSession/machine.ts";

const IDLE_VALIDATION = 60_000;
const IDLE_TTL = 30 * 60_000;
const SHUTDOWN = 5_000;

/** the machine's clock is the simulated one, so idleness is measured in simulated time */
const inputOf = (clock: SimulatedClock, effects: UpstreamSessionEffects) => ({
  effects,
  now: () => clock.now(),
  idleValidationMs: IDLE_VALIDATION,
  sessionIdleTtlMs: IDLE_TTL,
  probeTimeoutMs: 5_000,
  shutdownTimeoutMs: SHUTDOWN,
});

/** Effects that do nothing and succeed, with `some` in their place. */
const fakeEffects = (some: Partial<UpstreamSessionEffects>): UpstreamSessionEffects => ({
  connect: async () => {},
  probe: async () => "ok",
  closeGracefully: async () => {},
  forceClose: async () => {},
  startCalls: () => {},
  failCalls: () => {},
  abortCalls: () => {},
  stopTakingCalls: () => {},
  stopAccepting: () => {},
  giveUp: () => {},
  ...some,
});

type ProbeScript = Partial<Record<ProbeMethod, ProbeOutcome | "transport_error" | "hang">>;

/** The machine with fake effects that record what they were asked to do. */
function harness(opts: { probes?: ProbeScript; closeHangs?: boolean; forceHangs?: boolean } = {}) {
  const log = { connects: 0, probes: [] as ProbeMethod[], started: [] as string[], failed: [] as string[], gaveUp: 0, stopped: 0, forced: 0 };
  const never = new Promise<never>(() => {});
  const effects = fakeEffects({
    connect: async () => {
      log.connects += 1;
    },
    probe: async (method) => {
      log.probes.push(method);
      const outcome = opts.probes?.[method] ?? "ok";
      if (outcome === "transport_error") throw new Error("socket hang up");
      if (outcome === "hang") return never;
      return outcome;
    },
    closeGracefully: async () => {
      if (opts.closeHangs) await never;
    },
    forceClose: async () => {
      log.forced += 1;
      if (opts.forceHangs) await never;
    },
    startCalls: (calls) => void log.started.push(...calls.map((c) => c.id)),
    failCalls: (calls) => void log.failed.push(...calls.map((c) => c.id)),
    stopAccepting: () => void (log.stopped += 1),
    giveUp: () => void (log.gaveUp += 1),
  });
  const clock = new SimulatedClock();
  const actor = createActor(upstreamSessionMachine, { clock, input: inputOf(clock, effects) }).start();
  actor.send({ type: "CLAIMED" });
  return { actor, clock, log, state: () => stateName(actor.getSnapshot().value) };
}

const call = (id: string) => ({ type: "CALL" as const, call: { id, requestId: `req-${id}` } });

/** lets promise actors settle */
const settle = () => new Promise((r) => setImmediate(r));

describe("upstream session machine", () => {
  it("queues calls while connecting, then serves them; calls before idleValidation skip the probe", async () => {
    const h = harness();
    h.actor.send(call("c1"));
    assert.equal(h.state(), "connecting");
    assert.deepEqual(h.log.started, []);
    await settle();
    assert.equal(h.state(), "ready");
    assert.deepEqual(h.log.started, ["c1"]);
    h.clock.increment(IDLE_VALIDATION - 1);
    h.actor.send(call("c2"));
    assert.deepEqual(h.log.started, ["c1", "c2"]);
    assert.deepEqual(h.log.probes, []);
    assert.equal(h.log.connects, 1);
  });

  it("a ready, fresh session takes calls without a transition (the host's call table), exactly where the machine's CALL would only start them", async () => {
    const h = harness();
    /** what the host does with a call: the table when the policy allows, else the event */
    const take = (id: string) => {
      const snap = h.actor.getSnapshot();
      if (!takesCallAtOnce(snap)) return h.actor.send(call(id));
      snap.context.calls.admit([{ id, requestId: `req-${id}` }], snap.context.now());
      h.log.started.push(id);
    };
    const end = (id: string, transportFailed = false) => {
      const snap = h.actor.getSnapshot();
      if (endsCallAtOnce(snap, transportFailed)) snap.context.calls.inflight.delete(id);
      else h.actor.send({ type: "CALL_DONE", callId: id, transportFailed });
    };
    take("queued");
    assert.equal(h.state(), "connecting", "not ready: the machine queues it");
    await settle();
    take("direct");
    assert.deepEqual(h.log.started, ["queued", "direct"]);
    assert.deepEqual([...h.actor.getSnapshot().context.calls.inflight.keys()], ["queued", "direct"]);
    end("queued");
    assert.deepEqual([...h.actor.getSnapshot().context.calls.inflight.keys()], ["direct"]);
    // a direct call counts as activity: not stale idleValidation after the session became ready
    h.clock.increment(IDLE_VALIDATION - 1);
    take("later");
    h.clock.increment(IDLE_VALIDATION - 1);
    assert.equal(takesCallAtOnce(h.actor.getSnapshot()), true, "fresh: the last call came within idleValidation");
    h.clock.increment(1);
    assert.equal(takesCallAtOnce(h.actor.getSnapshot()), false, "stale: the next call goes through the machine, which probes");
    take("probed");
    assert.equal(h.state(), "validating");
    // a transport failure is the machine's: it closes the session
    end("direct", true);
    assert.equal(h.state(), "closing");
    assert.equal(endsCallAtOnce(h.actor.getSnapshot(), false), false);
  });

  it("goes stale exactly idleValidation after its last call, and expires sessionIdleTtl after it, though calls restart no timer", async () => {
    const h = harness();
    await settle();
    h.clock.increment(IDLE_VALIDATION / 2);
    h.actor.send(call("c1"));
    h.actor.send({ type: "CALL_DONE", callId: "c1", transportFailed: false });
    // past the timer armed when the session became ready: re-armed for what is left
    h.clock.increment(IDLE_VALIDATION - 1);
    h.actor.send(call("c2"));
    h.actor.send({ type: "CALL_DONE", callId: "c2", transportFailed: false });
    assert.deepEqual(h.log.started, ["c1", "c2"]);
    assert.deepEqual(h.log.probes, [], "each call came within idleValidation of the one before");
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c3"));
    assert.equal(h.state(), "validating", "idleValidation after c2: probed");
    await settle();
    assert.deepEqual(h.log.probes, ["ping"]);
    h.actor.send({ type: "CALL_DONE", callId: "c3", transportFailed: false });
    // the probe's end counts as activity, as the call that asked for it does
    h.clock.increment(IDLE_TTL - 1);
    assert.equal(h.state(), "ready");
    h.clock.increment(1);
    await settle();
    assert.equal(h.state(), "closed");
    assert.equal(h.actor.getSnapshot().context.closeCause, "idle");
  });

  it("healthy probe after idleValidation reuses the session", async () => {
    const h = harness();
    await settle();
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c1"));
    assert.equal(h.state(), "validating");
    assert.deepEqual(h.log.started, [], "the call waits for the probe");
    await settle();
    assert.deepEqual(h.log.probes, ["ping"]);
    assert.deepEqual(h.log.started, ["c1"]);
    assert.equal(h.log.connects, 1, "no new upstream session");
    assert.equal(h.state(), "ready");
  });

  it("method-not-found falls through ping → tools/list → prompts/list", async () => {
    const h = harness({ probes: { ping: "method_not_found", "tools/list": "method_not_found" } });
    await settle();
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c1"));
    for (let i = 0; i < 5; i++) await settle();
    assert.deepEqual(h.log.probes, ["ping", "tools/list", "prompts/list"]);
    assert.deepEqual(h.log.started, ["c1"]);
    assert.equal(h.log.connects, 1);
  });

  it("every step method-not-found stops probing and serves the call on the same session", async () => {
    const all: ProbeScript = { ping: "method_not_found", "tools/list": "method_not_found", "prompts/list": "method_not_found", "resources/list": "method_not_found" };
    const h = harness({ probes: all });
    await settle();
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c1"));
    for (let i = 0; i < 6; i++) await settle();
    assert.deepEqual(h.log.probes, ["ping", "tools/list", "prompts/list", "resources/list"]);
    assert.deepEqual(h.log.started, ["c1"]);
    assert.equal(h.log.connects, 1);
  });

  it("a failed probe (transport error) recreates the session before serving the call", async () => {
    const h = harness({ probes: { ping: "transport_error" } });
    await settle();
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c1"));
    for (let i = 0; i < 4; i++) await settle();
    assert.equal(h.log.connects, 2);
    assert.deepEqual(h.log.started, ["c1"]);
    assert.equal(h.state(), "ready");
  });

  it("a probe that times out (5 s) recreates the session", async () => {
    const h = harness({ probes: { ping: "hang" } });
    await settle();
    h.clock.increment(IDLE_VALIDATION);
    h.actor.send(call("c1"));
    await settle();
    h.clock.increment(4_999);
    assert.equal(h.state(), "validating");
    h.clock.increment(1);
    await settle();
    assert.equal(h.log.connects, 2);
    assert.deepEqual(h.log.started, ["c1"]);
  });

  it("expires after sessionIdleTtl without calls; a call restarts the idle timer", async () => {
    const h = harness();
    await settle();
    h.clock.increment(IDLE_TTL - 1000);
    h.actor.send(call("c1")); // stale → probe → ready, timers restart
    await settle();
    assert.deepEqual(h.log.started, ["c1"]);
    h.actor.send({ type: "CALL_DONE", callId: "c1", transportFailed: false });
    h.clock.increment(IDLE_TTL - 1);
    assert.equal(h.state(), "ready");
    h.clock.increment(1);
    await settle();
    assert.equal(h.state(), "closed");
    assert.equal(h.log.stopped, 1);
    assert.equal(h.actor.getSnapshot().context.closeCause, "idle");
  });

  it("does not expire while a call is in flight", async () => {
    const h = harness();
    h.actor.send(call("c1"));
    await settle();
    h.clock.increment(IDLE_TTL);
    assert.equal(h.state(), "ready");
    h.actor.send({ type: "CALL_DONE", callId: "c1", transportFailed: false });
    h.clock.increment(IDLE_TTL);
    await settle();
    assert.equal(h.state(), "closed");
  });

  it("a transport error during a call closes the session; a tool error does not", async () => {
    const h = harness();
    h.actor.send(call("c1"));
    h.actor.send(call("c2"));
    await settle();
    h.actor.send({ type: "CALL_DONE", callId: "c1", transportFailed: false });
    assert.equal(h.state(), "ready");
    h.actor.send({ type: "CALL_DONE", callId: "c2", transportFailed: true });
    await settle();
    assert.equal(h.state(), "closed");
    assert.equal(h.actor.getSnapshot().context.closeReason, "transport error during a call");
    assert.equal(h.actor.getSnapshot().context.closeCause, "transport_error");
  });

  it("a failed connect fails the queued calls and closes", async () => {
    const h = harness();
    const effects = fakeEffects({
      connect: async () => {
        throw new Error("ECONNREFUSED");
      },
      failCalls: (calls) => void h.log.failed.push(...calls.map((c) => c.id)),
    });
    const actor = createActor(upstreamSessionMachine, { clock: new SimulatedClock(), input: { effects } }).start();
    actor.send({ type: "CLAIMED" });
    actor.send(call("c1"));
    await settle();
    await settle();
    assert.deepEqual(h.log.failed, ["c1"]);
    assert.equal(stateName(actor.getSnapshot().value), "closed");
    assert.match(actor.getSnapshot().context.closeReason, /ECONNREFUSED/);
    assert.equal(actor.getSnapshot().context.closeCause, "connect_failed");
  });

  it("close is bounded: grace window, then force, then give up — 2× shutdownTimeout at most", async () => {
    const h = harness({ closeHangs: true, forceHangs: true });
    await settle();
    h.actor.send({ type: "CLOSE", reason: "evicted by an operator", cause: "evicted" });
    assert.equal(h.state(), "closing");
    h.actor.send({ type: "CLOSE", reason: "worker shutting down", cause: "shutdown" });
    assert.equal(h.actor.getSnapshot().context.closeCause, "evicted", "the first cause stands");
    h.clock.increment(SHUTDOWN);
    assert.equal(h.state(), "forcing");
    assert.equal(h.log.forced, 1);
    h.clock.increment(SHUTDOWN - 1);
    assert.equal(h.state(), "forcing");
    h.clock.increment(1);
    assert.equal(h.state(), "closed");
    assert.equal(h.log.gaveUp, 1);
  });

  it("calls arriving while closing are failed, not started", async () => {
    const h = harness({ closeHangs: true });
    await settle();
    h.actor.send({ type: "CLOSE", reason: "evicted", cause: "evicted" });
    h.actor.send(call("late"));
    assert.deepEqual(h.log.failed, ["late"]);
    assert.deepEqual(h.log.started, []);
  });
});

describe("upstream session machine: claiming, cancellation, draining", () => {
  /** like `harness`, left in `claiming`, recording aborted calls */
  function unclaimed() {
    const log = { started: [] as string[], failed: [] as string[], aborted: [] as string[], stoppedTaking: 0, stopped: 0 };
    const effects = fakeEffects({
      startCalls: (calls) => void log.started.push(...calls.map((c) => c.id)),
      failCalls: (calls) => void log.failed.push(...calls.map((c) => c.id)),
      abortCalls: (calls, reason) => void log.aborted.push(...calls.map((c) => `${c.id}: ${reason}`)),
      stopTakingCalls: () => void (log.stoppedTaking += 1),
      stopAccepting: () => void (log.stopped += 1),
    });
    const clock = new SimulatedClock();
    const actor = createActor(upstreamSessionMachine, { clock, input: inputOf(clock, effects) }).start();
    return { actor, clock, log, state: () => stateName(actor.getSnapshot().value) };
  }

  it("buffers calls while claiming; a won claim connects and serves them, a lost one drops them untouched", async () => {
    const won = unclaimed();
    won.actor.send(call("c1"));
    assert.equal(won.state(), "claiming");
    won.actor.send({ type: "CLAIMED" });
    await settle();
    assert.deepEqual(won.log.started, ["c1"]);
    const lost = unclaimed();
    lost.actor.send(call("c1"));
    lost.actor.send({ type: "CLAIM_LOST" });
    assert.equal(lost.actor.getSnapshot().status, "done");
    assert.equal(lost.state(), "abandoned");
    assert.deepEqual([lost.log.started, lost.log.failed, lost.log.stopped], [[], [], 0], "the holder answers them");
  });

  it("an eviction while claiming closes the actor as soon as its claim is won", async () => {
    const h = unclaimed();
    h.actor.send(call("c1"));
    h.actor.send({ type: "CLOSE", reason: "gateway removed", cause: "gateway_removed" });
    assert.equal(h.state(), "claiming");
    h.actor.send({ type: "CLAIMED" });
    await settle();
    assert.equal(h.state(), "closed");
    assert.deepEqual(h.log.failed, ["c1"]);
    assert.equal(h.actor.getSnapshot().context.closeCause, "gateway_removed");
  });

  it("a cancelled call is answered at once while queued, aborted once started", async () => {
    const h = unclaimed();
    h.actor.send(call("queued"));
    h.actor.send({ type: "CANCEL", requestId: "req-queued", reason: "cancelled by the client" });
    assert.deepEqual(h.log.failed, ["queued"]);
    h.actor.send({ type: "CLAIMED" });
    await settle();
    assert.deepEqual(h.log.started, [], "never started");
    h.actor.send(call("running"));
    h.actor.send({ type: "CANCEL", requestId: "req-running", reason: "cancelled by the client" });
    assert.deepEqual(h.log.aborted, ["running: cancelled by the client"]);
    assert.deepEqual([...h.actor.getSnapshot().context.calls.inflight.keys()], ["running"], "in flight until it ends");
  });

  it("drain: calls in flight finish, new ones are refused, then it closes", async () => {
    const h = unclaimed();
    h.actor.send({ type: "CLAIMED" });
    await settle();
    h.actor.send(call("c1"));
    h.actor.send(call("c2"));
    h.actor.send({ type: "DRAIN" });
    assert.equal(h.state(), "draining");
    assert.equal(h.log.stoppedTaking, 1);
    h.actor.send(call("late"));
    assert.deepEqual(h.log.failed, ["late"]);
    h.actor.send({ type: "CALL_DONE", callId: "c1", transportFailed: false });
    assert.equal(h.state(), "draining");
    h.actor.send({ type: "CALL_DONE", callId: "c2", transportFailed: false });
    await settle();
    assert.equal(h.state(), "closed");
    assert.deepEqual(h.log.aborted, [], "nothing cut off");
    assert.equal(h.actor.getSnapshot().context.closeCause, "shutdown");
  });

  it("drain is bounded: calls still in flight after shutdownTimeout are cut off", async () => {
    const h = unclaimed();
    h.actor.send({ type: "CLAIMED" });
    await settle();
    h.actor.send(call("slow"));
    h.actor.send({ type: "DRAIN" });
    h.clock.increment(SHUTDOWN - 1);
    assert.equal(h.state(), "draining");
    h.clock.increment(1);
    await settle();
    assert.equal(h.state(), "closed");
    assert.deepEqual(h.log.aborted, ["slow: worker shutting down"]);
  });

  it("drain while claiming or connecting: the calls that waited there run first, then it drains", async () => {
    const h = unclaimed();
    h.actor.send(call("early"));
    h.actor.send({ type: "DRAIN" });
    assert.equal(h.state(), "claiming");
    h.actor.send({ type: "CLAIMED" });
    assert.equal(h.state(), "connecting");
    h.actor.send(call("while-connecting"));
    await settle();
    assert.deepEqual(h.log.started, ["early", "while-connecting"], "arrived before the shutdown: served");
    assert.deepEqual(h.log.failed, []);
    assert.equal(h.state(), "draining");
    h.actor.send(call("late"));
    assert.deepEqual(h.log.failed, ["late"]);
    h.actor.send({ type: "CALL_DONE", callId: "early", transportFailed: false });
    h.actor.send({ type: "CALL_DONE", callId: "while-connecting", transportFailed: false });
    await settle();
    assert.equal(h.state(), "closed");
    assert.equal(h.actor.getSnapshot().context.closeCause, "shutdown");
  });

  it("drain while claiming with nothing waiting closes as soon as the claim is won", async () => {
    const h = unclaimed();
    h.actor.send({ type: "DRAIN" });
    h.actor.send({ type: "CLAIMED" });
    await settle();
    assert.equal(h.state(), "closed");
    assert.deepEqual(h.log.started, []);
  });

  it("drain without calls in flight closes at once", async () => {
    const h = unclaimed();
    h.actor.send({ type: "CLAIMED" });
    await settle();
    h.actor.send({ type: "DRAIN" });
    await settle();
    assert.equal(h.state(), "closed");
    assert.equal(h.log.stoppedTaking, 0);
  });
});
