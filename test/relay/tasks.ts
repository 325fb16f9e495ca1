// Fidelity: tasks (MCP 2025-11-25) on every path of the matrix (test/helpers/fidelity.ts).
// server-everything's simulate-research-query has taskSupport "required": called with a task,
// it answers a task at once and works through four stages of a second each.
import assert from "node:assert/strict";
import { it } from "node:test";
import { CallToolResultSchema, CreateTaskResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { PATH_NAMES, fidelitySuite, textOf, type Conn, type Path } from "../helpers/fidelity.ts";

const createTask = (conn: Conn, path: Path, topic: string) =>
  conn.client.request({ method: "tools/call", params: { name: path.tool("simulate-research-query"), arguments: { topic } } }, CreateTaskResultSchema, { task: { ttl: 120_000 } });

fidelitySuite("relay: tasks", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`a taskSupport "required" tool returns a task; tasks/get, tasks/list and tasks/result reach it (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect();
      try {
        const tool = (await conn.client.listTools()).tools.find((t) => t.name === path.tool("simulate-research-query"));
        assert.equal(tool?.execution?.taskSupport, "required", "the tool is listed with its task support");
        const { task } = await createTask(conn, path, "fidelity");
        assert.equal(task.status, "working");
        const got = await conn.client.experimental.tasks.getTask(task.taskId);
        assert.equal(got.taskId, task.taskId);
        assert.ok(["working", "completed"].includes(got.status), got.status);
        const listed = await conn.client.experimental.tasks.listTasks();
        assert.ok(listed.tasks.some((t) => t.taskId === task.taskId), `tasks/list names ${task.taskId}: ${JSON.stringify(listed).slice(0, 300)}`);
        const result = await conn.client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
        assert.match(textOf(result), /Research Report: fidelity/);
        assert.equal((await conn.client.experimental.tasks.getTask(task.taskId)).status, "completed");
      } finally {
        await conn.close();
      }
    });

    it(`tasks/cancel cancels a working task (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect();
      try {
        const { task } = await createTask(conn, path, "to be cancelled");
        const cancelled = await conn.client.experimental.tasks.cancelTask(task.taskId);
        assert.equal(cancelled.status, "cancelled");
        assert.equal((await conn.client.experimental.tasks.getTask(task.taskId)).status, "cancelled");
      } finally {
        await conn.close();
      }
    });
  }
});
