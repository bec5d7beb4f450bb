// BullMQ baseline for `make bench`: the same figures opsrun reports, measured
// on the same Redis, printed as one JSON object on stdout.
//   REDIS_URL=redis://127.0.0.1:6379 node bench.mjs [jobs] [concurrency] [samples]
import { Queue, Worker } from "bullmq";

const url = new URL(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const jobs = Number(process.argv[2] ?? 50000);
const concurrency = Number(process.argv[3] ?? 50);
const samples = Number(process.argv[4] ?? 1000);
const prefix = `bullbench${process.pid}`;

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(sorted.length * q))) - 1];
}

async function main() {
  // Single add latency, one at a time.
  const latencyQueue = new Queue("latency", { connection, prefix });
  await latencyQueue.waitUntilReady();
  const latencies = [];
  for (let i = 0; i < samples; i++) {
    const t = process.hrtime.bigint();
    await latencyQueue.add("noop", { i });
    latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  latencies.sort((a, b) => a - b);

  // addBulk throughput, in chunks of 1000 (no worker running).
  const bulkQueue = new Queue("bulk", { connection, prefix });
  let t = process.hrtime.bigint();
  for (let i = 0; i < jobs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(jobs, i + 1000); j++) chunk.push({ name: "noop", data: { j } });
    await bulkQueue.addBulk(chunk);
  }
  const addBulkSeconds = Number(process.hrtime.bigint() - t) / 1e9;

  // End to end: enqueue with addBulk while one worker (concurrency N) drains.
  const e2eQueue = new Queue("e2e", { connection, prefix });
  let done = 0;
  let resolveAll;
  const allDone = new Promise((r) => (resolveAll = r));
  const worker = new Worker("e2e", async () => {}, {
    connection, prefix, concurrency,
    removeOnComplete: { count: 1000 }, removeOnFail: { count: 1000 },
  });
  worker.on("completed", () => { if (++done === jobs) resolveAll(); });
  await worker.waitUntilReady();
  t = process.hrtime.bigint();
  for (let i = 0; i < jobs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(jobs, i + 1000); j++) chunk.push({ name: "noop", data: { j } });
    await e2eQueue.addBulk(chunk);
  }
  await allDone;
  const e2eSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  await worker.close();
  for (const q of [latencyQueue, bulkQueue, e2eQueue]) {
    await q.obliterate({ force: true });
    await q.close();
  }
  console.log(JSON.stringify({
    bullmq: "6.7.0",
    jobs, concurrency,
    add_p50_ms: percentile(latencies, 0.5),
    add_p99_ms: percentile(latencies, 0.99),
    add_bulk_per_s: jobs / addBulkSeconds,
    end_to_end_per_s: jobs / e2eSeconds,
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
