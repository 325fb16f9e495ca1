import { GatewayRecordSchema, type GatewayRecord } from "../../protocol/gateway.ts";

/**
 * A gateway record for code that connects to an upstream itself, without the registry: the
 * schema's defaults, a fixed id unless one is given, created and updated now.
 */
export function gatewayRecord(fields: { name: string; transport: GatewayRecord["transport"]; url?: string; id?: string } & Record<string, unknown>): GatewayRecord {
  const now = new Date().toISOString();
  return GatewayRecordSchema.parse({ id: "0123456789abcdef", createdAt: now, updatedAt: now, ...fields });
}
