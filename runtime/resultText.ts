// The JSON text an upstream sent for a result, kept beside the parsed result so that its answer
// reaches the client as the bytes the upstream sent: neither the size check nor the edge encodes
// the result again (it was a third of the in-process JSON work of a call). Results are never
// changed in place on the way (a change, as a scrub or a task id's rename, makes a new object,
// which has no text and is encoded as before).

/** text and UTF-8 size of a result's JSON, by the parsed result */
const texts = new WeakMap<object, { text: string; bytes: number }>();

const BEFORE_ID = '{"jsonrpc":"2.0","id":';
const RESULT_KEY = ',"result":';
/** how the SDK's servers write an answer: the result first */
const RESULT_FIRST = '{"result":';
const AFTER_RESULT = ',"jsonrpc":"2.0","id":';

/**
 * One JSON-RPC message's text (`bytes`: its UTF-8 size) as a value, like `JSON.parse`. When it is
 * the answer to `id` written as servers usually write one (`{"jsonrpc":"2.0","id":<id>,"result":…}`
 * or `{"result":…,"jsonrpc":"2.0","id":<id>}`, no space between the fields), only the result is
 * parsed, and its text is remembered. Any other text, or one whose result does not parse alone
 * (another field beside it), is parsed whole.
 */
export function parseMessage(text: string, bytes: number, id: string | number | undefined): unknown {
  if (id === undefined || text.charCodeAt(text.length - 1) !== 0x7d /* } */) return JSON.parse(text);
  let start = -1;
  let end = -1;
  const idText = JSON.stringify(id);
  if (text.startsWith(BEFORE_ID)) {
    start = BEFORE_ID.length + idText.length + RESULT_KEY.length;
    end = text.length - 1;
    if (end <= start || !text.startsWith(idText, BEFORE_ID.length) || !text.startsWith(RESULT_KEY, start - RESULT_KEY.length)) return JSON.parse(text);
  } else if (text.startsWith(RESULT_FIRST)) {
    start = RESULT_FIRST.length;
    end = text.length - 1 - idText.length - AFTER_RESULT.length;
    if (end <= start || !text.startsWith(AFTER_RESULT, end) || !text.startsWith(idText, end + AFTER_RESULT.length)) return JSON.parse(text);
  } else return JSON.parse(text);
  const resultText = text.slice(start, end);
  let result: unknown;
  try {
    result = JSON.parse(resultText);
  } catch {
    return JSON.parse(text);
  }
  // the result parsed alone: the whole text is exactly {"jsonrpc","id","result"}, nothing beside them.
  // A text with line breaks (pretty-printed) is not kept: it could not be an SSE event's data line.
  if (typeof result === "object" && result !== null && !Array.isArray(result) && resultText.indexOf("\n") === -1 && resultText.indexOf("\r") === -1) {
    // the envelope's own text is ASCII but for the id's
    const idExtra = Buffer.byteLength(idText) - idText.length;
    texts.set(result, { text: resultText, bytes: bytes - (text.length - resultText.length) - idExtra });
  }
  return { jsonrpc: "2.0", id, result };
}

/** The text and UTF-8 size the upstream sent for `result`, if it came that way and nothing changed it. */
export function resultTextOf(result: unknown): { text: string; bytes: number } | undefined {
  return typeof result === "object" && result !== null ? texts.get(result) : undefined;
}

/** `JSON.stringify` of an answer `{ jsonrpc, id, result }` (or a batch of them), the result as the upstream's text when there is one. */
export function answerJson(message: unknown): string {
  if (Array.isArray(message)) return message.length === 1 ? `[${answerJson(message[0])}]` : JSON.stringify(message);
  const m = message as { jsonrpc?: unknown; id?: unknown; result?: unknown };
  const raw = m !== null && typeof m === "object" && m.jsonrpc === "2.0" ? resultTextOf(m.result) : undefined;
  if (!raw || Object.keys(m).length !== 3) return JSON.stringify(message);
  return `${BEFORE_ID}${JSON.stringify(m.id)}${RESULT_KEY}${raw.text}}`;
}
