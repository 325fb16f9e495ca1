import pino, { type Logger } from "pino";

export type { Logger };

/** Paths pino censors wherever they appear in a log object. */
export const REDACT_PATHS = [
  "authorization",
  "*.authorization",
  "*.*.authorization",
  "headers.*",
  "*.headers.*",
  "token",
  "*.token",
  "*.*.token",
  "password",
  "*.password",
  "*.*.password",
  "params",
  "*.params",
  "*.*.params",
  "key",
  "*.key",
  "*.*.key",
  "env",
  "*.env",
  "*.*.env",
  "secret",
  "*.secret",
];

/** Query parameter values in a URL replaced by `***`, for logging. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    for (const k of [...u.searchParams.keys()]) u.searchParams.set(k, "***");
    if (u.username || u.password) {
      u.username = "***";
      u.password = "";
    }
    return u.toString();
  } catch {
    return "(unparsable url)";
  }
}

export type LoggerOptions = { level: string; name?: string; destination?: pino.DestinationStream; pretty?: boolean };

/** JSON logs; pretty when stdout is a terminal. */
export function createLogger(opts: LoggerOptions): Logger {
  const base = { level: opts.level, name: opts.name, redact: { paths: REDACT_PATHS, censor: "[redacted]" } };
  if (opts.destination) return pino(base, opts.destination);
  if (opts.pretty ?? process.stdout.isTTY) {
    return pino({ ...base, transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l" } } });
  }
  return pino(base);
}
