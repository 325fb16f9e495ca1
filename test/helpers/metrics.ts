import assert from "node:assert/strict";

export type Sample = { name: string; labels: Record<string, string>; value: number };
export type Scrape = { text: string; samples: Sample[]; types: Map<string, string> };

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/y;

/**
 * Parses the Prometheus text exposition format (version 0.0.4) strictly: every line is a
 * HELP, a TYPE or a sample of a family declared before it; anything else fails the test.
 */
export function parseExposition(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === "TYPE") {
        assert.match(meta[3]!, /^(counter|gauge|histogram|summary|untyped)$/, line);
        types.set(meta[2]!, meta[3]!);
      }
      continue;
    }
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const [, name, body, value] = m;
    const family = [...types.keys()].find((f) => name === f || (types.get(f) === "histogram" && /^(.*)_(bucket|sum|count)$/.exec(name!)?.[1] === f));
    assert.ok(family, `sample of an undeclared family: ${line}`);
    const labels: Record<string, string> = {};
    if (body) {
      LABEL.lastIndex = 0;
      let consumed = 0;
      for (let l = LABEL.exec(body); l; l = LABEL.exec(body)) {
        labels[l[1]!] = l[2]!.replace(/\\(["\\n])/g, (_, c: string) => (c === "n" ? "\n" : c));
        consumed = LABEL.lastIndex;
      }
      assert.equal(consumed, body.length, `malformed labels: ${line}`);
    }
    const v = Number(value === "+Inf" ? Infinity : value === "-Inf" ? -Infinity : value);
    // prom-client writes `Nan` for an empty mean; Prometheus parses NaN in any case
    assert.ok(!Number.isNaN(v) || /^nan$/i.test(value!), `not a number: ${line}`);
    samples.push({ name: name!, labels, value: v });
  }
  return { text, samples, types };
}

/** GET /metrics of an edge: the response, and its body parsed when it is 200. */
export async function scrape(port: number, token?: string): Promise<Scrape> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  assert.equal(res.status, 200, `GET /metrics answered ${res.status}`);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

/** The sum of the samples `name` whose labels include `labels`; 0 when there are none (a counter not yet moved). */
export function value(s: Scrape, name: string, labels: Record<string, string> = {}): number {
  const found = s.samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return found.reduce((sum, x) => sum + x.value, 0);
}
