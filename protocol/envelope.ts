import { z } from "zod";

export const ERROR_CODES = ["invalid_request", "not_found", "conflict", "unavailable", "timeout", "too_large", "internal"] as const;
export const ErrorCodeSchema = z.enum(ERROR_CODES);
export type ErrorCode = z.infer<typeof ErrorCodeSchema>;

export const ErrorIssueSchema = z.object({ path: z.string(), message: z.string() });
export type ErrorIssue = z.infer<typeof ErrorIssueSchema>;

export const ErrorBodySchema = z.object({
  code: ErrorCodeSchema,
  message: z.string(),
  issues: z.array(ErrorIssueSchema).optional(),
});
export type ErrorBody = z.infer<typeof ErrorBodySchema>;

/** `{"ok":true,"data":…}` or `{"ok":false,"error":{code,message,issues}}` */
export function envelopeSchema<T extends z.ZodType>(data: T) {
  return z.discriminatedUnion("ok", [
    z.object({ ok: z.literal(true), data }),
    z.object({ ok: z.literal(false), error: ErrorBodySchema }),
  ]);
}
export const AnyEnvelopeSchema = envelopeSchema(z.unknown());
export type Envelope<T> = { ok: true; data: T } | { ok: false; error: ErrorBody };

/** An error that crosses the bus as an error envelope. */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly issues?: ErrorIssue[],
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "ProtocolError";
  }
  toBody(): ErrorBody {
    return this.issues ? { code: this.code, message: this.message, issues: this.issues } : { code: this.code, message: this.message };
  }
}

export function ok<T>(data: T): Envelope<T> {
  return { ok: true, data };
}

export function fail(code: ErrorCode, message: string, issues?: ErrorIssue[]): Envelope<never> {
  return { ok: false, error: issues ? { code, message, issues } : { code, message } };
}

/** zod issues as `{path: "a.b[0]", message}` pairs. */
export function zodIssues(error: z.ZodError): ErrorIssue[] {
  return error.issues.map((i) => ({
    path: i.path.map((seg, n) => (typeof seg === "number" ? `[${seg}]` : n === 0 ? String(seg) : `.${String(seg)}`)).join("") || "(root)",
    message: i.message,
  }));
}

/** Parses `input` with `schema`, or throws `invalid_request` naming the bad fields. */
export function parseRequest<T extends z.ZodType>(schema: T, input: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(input);
  if (!r.success) throw new ProtocolError("invalid_request", `invalid ${what}`, zodIssues(r.error));
  return r.data;
}
