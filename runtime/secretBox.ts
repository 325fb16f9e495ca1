import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/** AES-256-GCM sealing of secrets at rest: `enc:v1:<iv>:<ciphertext>:<tag>` (base64url). */
export class SecretBox {
  readonly #key: Buffer;

  constructor(hexKey: string) {
    if (!/^[0-9a-fA-F]{64}$/.test(hexKey)) throw new Error("secret key must be 64 hex characters (32 bytes)");
    this.#key = Buffer.from(hexKey, "hex");
  }

  /** `context` (the gateway id) is bound as associated data, so a sealed value cannot be moved to another record. */
  seal(plain: string, context: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.#key, iv);
    cipher.setAAD(Buffer.from(context));
    const ct = Buffer.concat([cipher.update(plain, "utf8"), cipher.final()]);
    return `enc:v1:${iv.toString("base64url")}:${ct.toString("base64url")}:${cipher.getAuthTag().toString("base64url")}`;
  }

  open(sealed: string, context: string): string {
    const [scheme, version, iv, ct, tag] = sealed.split(":");
    if (scheme !== "enc" || version !== "v1" || iv === undefined || ct === undefined || tag === undefined) {
      throw new Error("not a sealed secret");
    }
    const decipher = createDecipheriv("aes-256-gcm", this.#key, Buffer.from(iv, "base64url"));
    decipher.setAAD(Buffer.from(context));
    decipher.setAuthTag(Buffer.from(tag, "base64url"));
    return Buffer.concat([decipher.update(Buffer.from(ct, "base64url")), decipher.final()]).toString("utf8");
  }
}
