import { spawnSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

const INSTALL_HINT = "nats-server not found: install it with `sudo apt-get install nats-server` or set NATS_SERVER_BIN";

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir && executable(join(dir, name))) return join(dir, name);
  }
  for (const dir of ["/usr/bin", "/usr/sbin", "/usr/local/bin"]) {
    if (executable(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/**
 * Finds nats-server: NATS_SERVER_BIN, then PATH. When absent and we are root with
 * apt-get, installs Debian's package; otherwise throws one line saying how to install it.
 */
export function locateNatsServer(explicit?: string, log: (line: string) => void = () => {}): string {
  if (explicit) {
    if (!executable(explicit)) throw new Error(`NATS_SERVER_BIN=${explicit} is not an executable file`);
    return explicit;
  }
  const found = onPath("nats-server");
  if (found) return found;
  const aptGet = onPath("apt-get");
  if (process.getuid?.() === 0 && aptGet) {
    log("nats-server not found; installing Debian's nats-server package with apt-get");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    let r = spawnSync(aptGet, ["install", "-y", "-qq", "nats-server"], { stdio: "ignore", env });
    if (r.status !== 0) {
      spawnSync(aptGet, ["update", "-qq"], { stdio: "ignore", env });
      r = spawnSync(aptGet, ["install", "-y", "-qq", "nats-server"], { stdio: "ignore", env });
    }
    const installed = onPath("nats-server");
    if (r.status === 0 && installed) return installed;
  }
  throw new Error(INSTALL_HINT);
}
