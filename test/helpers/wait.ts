/**
 * Polls `f` every 25 ms until it returns something truthy, which it returns; throws after
 * `timeoutMs`, a hang bound (30 s by default: a loaded machine runs 10 s late, never a speed check).
 */
export async function until<T>(what: string, f: () => Promise<T | undefined | null | false> | T | undefined | null | false, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
