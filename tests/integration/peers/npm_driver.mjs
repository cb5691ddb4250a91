// Drives the npm client @tursodatabase/sync from a test: one JSON command per stdin line,
// one JSON answer per stdout line (same commands as pyturso_driver.py).
// The package comes from TURSO_PEERS (default: the repo's .peers folder).
import { createInterface } from "node:readline";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const peers = process.env.TURSO_PEERS || join(here, "..", "..", "..", ".peers");
const { connect } = await import(
  pathToFileURL(join(peers, "node_modules", "@tursodatabase", "sync", "dist", "promise.js")).href
);

let db = null;
const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  let answer;
  try {
    let result = null;
    switch (cmd.op) {
      case "connect":
        db = await connect({
          path: cmd.path,
          url: cmd.url,
          authToken: cmd.token ?? undefined,
          clientName: "test-npm",
          longPollTimeoutMs: cmd.long_poll_ms ?? undefined,
          remoteEncryption: cmd.remote_key ? { key: cmd.remote_key, cipher: "aes256gcm" } : undefined,
        });
        break;
      case "exec":
        await (await db.prepare(cmd.sql)).run(...(cmd.args ?? []));
        break;
      case "query":
        result = (await (await db.prepare(cmd.sql)).raw().all(...(cmd.args ?? []))).map((r) => Array.from(r));
        break;
      case "push":
        await db.push();
        break;
      case "pull":
        result = await db.pull();
        break;
      case "stats": {
        const s = await db.stats();
        result = { received: s.networkReceivedBytes, sent: s.networkSentBytes, revision: s.revision };
        break;
      }
      case "close":
        if (db) await db.close();
        db = null;
        break;
      default:
        throw new Error(`unknown op ${cmd.op}`);
    }
    answer = { ok: true, result };
  } catch (err) {
    answer = { ok: false, error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(answer, (k, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n");
}
