// graphile-worker baseline for `make bench`: a Postgres-only queue (no
// Redis), measured on the same Postgres as opsrun, the same figures, printed
// as one JSON object on stdout.
//   DATABASE_URL=postgres://… node bench.mjs [jobs] [concurrency] [samples]
// Workers run as separate processes (`node bench.mjs worker SCHEMA CONCURRENCY`),
// like opsrun's. Each invocation uses a schema of its own.
import { fork } from "node:child_process";
import { Logger, makeWorkerUtils, run } from "graphile-worker";
import { busyTicks, ticksSince } from "../busy_ticks.mjs";

const connectionString = process.env.DATABASE_URL;
const schema = process.env.GRAPHILE_BENCH_SCHEMA ?? `graphile_bench_${process.pid}`;
// Quiet: logging every completed job would measure the terminal.
const logger = new Logger(() => () => {});
const options = { connectionString, schema, noHandleSignals: true, logger };

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(sorted.length * q))) - 1];
}

// A worker process: no-op jobs until told to stop.
async function workerProcess(concurrency) {
  // Its throughput settings (graphile-worker 0.17+): a local queue that
  // fetches jobs in batches, and batched completions.
  const preset = { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } };
  const runner = await run({ ...options, preset, concurrency, maxPoolSize: concurrency + 2 }, { noop: async () => {} });
  process.send({ ready: true });
  process.on("message", async () => {
    await runner.stop();
    process.exit(0);
  });
}

// addJobs in chunks of 1000, two chunks in flight, results awaited in order.
async function addAll(utils, jobs, n0) {
  let previous = Promise.resolve();
  for (let i = 0; i < jobs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(jobs, i + 1000); j++) chunk.push({ identifier: "noop", payload: { j: n0 + j } });
    const current = utils.addJobs(chunk);
    await previous;
    previous = current;
  }
  await previous;
}

async function pending(utils) {
  return utils.withPgClient(async (client) => {
    const { rows } = await client.query(`select count(*)::int as n from "${schema}"._private_jobs`);
    return rows[0].n;
  });
}

// End to end: `processes` worker processes at `concurrency`, jobs added
// while they drain (graphile-worker deletes a job when it completes);
// returns jobs/s and the machine's busy ticks meanwhile.
async function endToEnd(utils, jobs, processes, concurrency, n0) {
  const children = [];
  for (let i = 0; i < processes; i++) {
    const child = fork(new URL(import.meta.url).pathname, ["worker", String(concurrency)], {
      env: { ...process.env, GRAPHILE_BENCH_SCHEMA: schema },
    });
    await new Promise((r) => child.once("message", r));
    children.push(child);
  }
  const busy = busyTicks();
  const t = process.hrtime.bigint();
  await addAll(utils, jobs, n0);
  while ((await pending(utils)) > 0) await new Promise((r) => setTimeout(r, 20));
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const ticks = ticksSince(busy);
  await Promise.all(children.map((c) => new Promise((r) => { c.once("exit", r); c.send("stop"); })));
  return { perSecond: jobs / seconds, ticks };
}

async function main() {
  const jobs = Number(process.argv[2] ?? 50000);
  const concurrency = Number(process.argv[3] ?? 50);
  const samples = Number(process.argv[4] ?? 1000);
  const utils = await makeWorkerUtils(options);
  await utils.migrate();

  // Single add latency, one at a time.
  const latencies = [];
  for (let i = 0; i < samples; i++) {
    const t = process.hrtime.bigint();
    await utils.addJob("noop", { i });
    latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  latencies.sort((a, b) => a - b);
  await utils.withPgClient((c) => c.query(`delete from "${schema}"._private_jobs`));

  // addJobs throughput, in chunks of 1000 (no worker running).
  const busy = busyTicks();
  const t = process.hrtime.bigint();
  await addAll(utils, jobs, 0);
  const addBulkSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  const addBulkTicks = ticksSince(busy);
  await utils.withPgClient((c) => c.query(`delete from "${schema}"._private_jobs`));

  const one = await endToEnd(utils, jobs, 1, concurrency, jobs);
  const two = await endToEnd(utils, jobs, 2, concurrency, 2 * jobs);
  await utils.withPgClient((c) => c.query(`drop schema "${schema}" cascade`));
  await utils.release();
  console.log(JSON.stringify({
    version: "0.18.0",
    jobs, concurrency,
    add_p50_ms: percentile(latencies, 0.5),
    add_p99_ms: percentile(latencies, 0.99),
    add_bulk_per_s: jobs / addBulkSeconds,
    end_to_end_per_s: one.perSecond,
    end_to_end_2_workers_per_s: two.perSecond,
    add_bulk_busy_ticks: addBulkTicks,
    end_to_end_busy_ticks: one.ticks,
    end_to_end_2_workers_busy_ticks: two.ticks,
  }));
}

if (process.argv[2] === "worker") {
  workerProcess(Number(process.argv[3])).catch((e) => { console.error(e); process.exit(1); });
} else {
  main().catch((e) => { console.error(e); process.exit(1); });
}
