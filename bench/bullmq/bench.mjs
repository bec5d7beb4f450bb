// BullMQ baseline for `make bench`: the same figures opsrun reports, measured
// on the same Redis, printed as one JSON object on stdout.
//   REDIS_URL=redis://127.0.0.1:6379 node bench.mjs [jobs] [concurrency] [samples]
// Workers run as separate processes (`node bench.mjs worker QUEUE CONCURRENCY`),
// like opsrun's, so process counts and RSS compare.
import { fork } from "node:child_process";
import { Queue, Worker } from "bullmq";
import { busyTicks, ticksSince } from "../busy_ticks.mjs";

const url = new URL(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const prefix = process.env.BULLBENCH_PREFIX ?? `bullbench${process.pid}`;

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(sorted.length * q))) - 1];
}

// A worker process: no-op jobs until told to stop; reports its peak RSS.
async function workerProcess(queue, concurrency) {
  let rss = process.memoryUsage().rss;
  const sampler = setInterval(() => { rss = Math.max(rss, process.memoryUsage().rss); }, 50);
  const worker = new Worker(queue, async () => {}, { connection, prefix, concurrency });
  await worker.waitUntilReady();
  process.send({ ready: true });
  process.on("message", async () => {
    await worker.close();
    clearInterval(sampler);
    process.send({ rss_mb: Math.max(rss, process.memoryUsage().rss) / 1048576 });
    process.exit(0);
  });
}

// addBulk in chunks of 1000, two chunks in flight (as opsrun's
// ensure_runs_chunked overlaps two), results awaited in order.
async function addAll(queue, jobs) {
  let previous = Promise.resolve();
  for (let i = 0; i < jobs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(jobs, i + 1000); j++) chunk.push({ name: "noop", data: { j } });
    const current = queue.addBulk(chunk);
    await previous;
    previous = current;
  }
  await previous;
}

// End to end: `processes` worker processes at `concurrency`, jobs added with
// addBulk while they drain; returns jobs/s, the workers' peak RSS and the
// machine's busy ticks meanwhile.
async function endToEnd(name, jobs, processes, concurrency) {
  const queue = new Queue(name, { connection, prefix });
  await queue.waitUntilReady();
  const children = [];
  for (let i = 0; i < processes; i++) {
    const child = fork(new URL(import.meta.url).pathname, ["worker", name, String(concurrency)], {
      env: { ...process.env, BULLBENCH_PREFIX: prefix },
    });
    await new Promise((r) => child.once("message", r));
    children.push(child);
  }
  const busy = busyTicks();
  const t = process.hrtime.bigint();
  await addAll(queue, jobs);
  while ((await queue.getCompletedCount()) < jobs) await new Promise((r) => setTimeout(r, 20));
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const ticks = ticksSince(busy);
  const rss = await Promise.all(children.map((c) => new Promise((r) => { c.once("message", (m) => r(m.rss_mb)); c.send("stop"); })));
  await queue.obliterate({ force: true });
  await queue.close();
  return { perSecond: jobs / seconds, rssMb: Math.max(...rss), ticks };
}

async function main() {
  const jobs = Number(process.argv[2] ?? 50000);
  const concurrency = Number(process.argv[3] ?? 50);
  const samples = Number(process.argv[4] ?? 1000);

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
  const busy = busyTicks();
  const t = process.hrtime.bigint();
  await addAll(bulkQueue, jobs);
  const addBulkSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  const addBulkTicks = ticksSince(busy);
  for (const q of [latencyQueue, bulkQueue]) {
    await q.obliterate({ force: true });
    await q.close();
  }

  const one = await endToEnd("e2e1", jobs, 1, concurrency);
  const two = await endToEnd("e2e2", jobs, 2, concurrency);
  const wide = await endToEnd("e2e100", jobs, 1, 100);
  console.log(JSON.stringify({
    version: "6.7.0",
    jobs, concurrency,
    add_p50_ms: percentile(latencies, 0.5),
    add_p99_ms: percentile(latencies, 0.99),
    add_bulk_per_s: jobs / addBulkSeconds,
    end_to_end_per_s: one.perSecond,
    end_to_end_2_workers_per_s: two.perSecond,
    worker_rss_mb_c100: wide.rssMb,
    add_bulk_busy_ticks: addBulkTicks,
    end_to_end_busy_ticks: one.ticks,
    end_to_end_2_workers_busy_ticks: two.ticks,
  }));
}

if (process.argv[2] === "worker") {
  workerProcess(process.argv[3], Number(process.argv[4])).catch((e) => { console.error(e); process.exit(1); });
} else {
  main().catch((e) => { console.error(e); process.exit(1); });
}
