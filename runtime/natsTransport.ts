// nats.js writes its outbound buffer to the socket in a microtask, so what a worker publishes in
// different macrotasks of one turn of the event loop (a call's request, its reply, the answer's
// copy; the KV puts of many pollers' timers) is one `socket.write` each: one system call per
// message. This transport gathers those writes and makes them one, at the end of the turn.
import { NodeTransport } from "@nats-io/transport-node/lib/node_transport.js";

/**
 * Bytes gathered before they are written at once, without waiting for the end of the turn:
 * nats.js's own flush threshold (its outbound buffer is written inline past 32 KiB), so a
 * burst is written in chunks of that size, as nats.js would, and the gathering adds no
 * buffer of its own beyond it.
 */
const GATHER_LIMIT = 32 * 1024;

/**
 * nats.js's Node transport with its writes gathered: frames sent within one turn of the event
 * loop leave in one write, in order, on `setImmediate` (after the turn's I/O callbacks, before
 * its timers: a message waits no longer than the turn it was sent in). Order is kept, so
 * `nc.flush()`'s PING still follows everything published before it. Closing writes what is
 * gathered first; a discarded transport (reconnect) drops it as nats.js drops its outbound
 * buffer. One transport per connection and per reconnect, as nats.js makes them.
 */
export class GatheringTransport extends NodeTransport {
  #frames: Uint8Array[] = [];
  #bytes = 0;
  #immediate: NodeJS.Immediate | undefined;

  override send(frame: Uint8Array): void {
    this.#frames.push(frame);
    this.#bytes += frame.length;
    if (this.#bytes >= GATHER_LIMIT) this.#write();
    else this.#immediate ??= setImmediate(this.#write);
  }

  readonly #write = (): void => {
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#immediate = undefined;
    const frames = this.#frames;
    if (frames.length === 0) return;
    this.#frames = [];
    this.#bytes = 0;
    super.send(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  };

  override close(err?: Error): Promise<void> {
    this.#write();
    return super.close(err);
  }

  override disconnect(): void {
    this.#write();
    super.disconnect();
  }

  override discard(): void {
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#immediate = undefined;
    this.#frames = [];
    this.#bytes = 0;
    super.discard();
  }
}
