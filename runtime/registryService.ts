import type { Registry } from "../actors/registry.ts";
import { QUEUE, type Subjects } from "../protocol/subjects.ts";
import type { AdminService } from "./adminService.ts";

/** Hosts the registry on the admin gateway subjects, one queue group for all workers. */
export function serveRegistry(admin: AdminService, registry: Registry, s: Subjects): void {
  admin.endpoint(s.admin.gateway("add"), (p) => registry.add(p), QUEUE.registry);
  admin.endpoint(s.admin.gateway("update"), (p) => registry.update(p), QUEUE.registry);
  admin.endpoint(s.admin.gateway("remove"), (p) => registry.remove(p), QUEUE.registry);
  admin.endpoint(s.admin.gateway("get"), (p) => registry.get(p), QUEUE.registry);
  admin.endpoint(s.admin.gateway("list"), (p) => registry.list(p), QUEUE.registry);
}
