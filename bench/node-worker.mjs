// bench/node-worker.mjs: the "small Node worker" peer of the tokenwarden benchmark (bench/run).
//
//   node bench/node-worker.mjs --file meta.ndjson --base http://127.0.0.1:PORT
//        [--api-version v25.0] [--app-token APPID|SECRET] [--conns 64] [--budget SECS]
//
// For every line of an NDJSON file from the simulator's /admin/seed_bulk (one object per line
// with an access_token), it sends the request tokenwarden's Meta health check sends:
// GET BASE/VERSION/debug_token?input_token=TOKEN&access_token=APPID%7CSECRET, with global
// fetch (keep-alive by default), --conns requests in flight (a pool of async workers pulling
// lines from one reader), and reads and parses each reply (HTTP 200 and data.is_valid true, or
// it counts as an error). It keeps no state: no store, no encryption, no schedule.
//
// After --budget seconds (default: no limit) it sends no new request, lets those in flight end,
// and reports what it did; bench/run then extrapolates. It prints one JSON object:
//   {"requests":N,"seconds":S,"rate":R,"p50_ms":A,"p99_ms":B,"errors":E,
//    "max_rss_kb":K,"cpu_user_s":U,"cpu_system_s":Y,"capped":false}
// Works on Node 18 and 20 (global fetch; Node 18 prints an ExperimentalWarning on stderr).
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';

function parseArgs(argv) {
  const opts = {
    file: '',
    base: '',
    apiVersion: 'v25.0',
    appToken: 'sim-meta-app|sim-meta-secret',
    conns: 64,
    budget: 0,
  };
  const names = {
    '--file': 'file',
    '--base': 'base',
    '--api-version': 'apiVersion',
    '--app-token': 'appToken',
    '--conns': 'conns',
    '--budget': 'budget',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) usage(`bad argument: ${argv[i]}`);
    opts[key] = argv[i + 1];
  }
  opts.conns = Number(opts.conns);
  opts.budget = Number(opts.budget);
  if (!opts.file || !opts.base) usage('--file and --base are required');
  if (!Number.isInteger(opts.conns) || opts.conns < 1) usage('--conns must be a positive integer');
  if (!(opts.budget >= 0)) usage('--budget must be a number of seconds, 0 for none');
  return opts;
}

function usage(message) {
  process.stderr.write(`node-worker: ${message}\n`);
  process.stderr.write(
    'usage: node-worker.mjs --file NDJSON --base URL [--api-version V] [--app-token ID|SECRET] ' +
      '[--conns N] [--budget SECS]\n',
  );
  process.exit(2);
}

// Nearest-rank percentile of a sorted array.
function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  return sorted[rank - 1];
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const prefix =
    `${opts.base}/${opts.apiVersion}/debug_token?access_token=` +
    `${encodeURIComponent(opts.appToken)}&input_token=`;

  // One reader shared by every worker; next() calls are chained so that they never overlap.
  const lines = createInterface({
    input: createReadStream(opts.file),
    crlfDelay: Infinity,
  })[Symbol.asyncIterator]();
  let chain = Promise.resolve();
  const nextLine = () => {
    const p = chain.then(() => lines.next());
    chain = p.catch(() => {});
    return p;
  };

  const latencies = []; // ms, one per request
  let errors = 0;
  let capped = false;
  const start = performance.now();
  const deadline = opts.budget > 0 ? start + opts.budget * 1000 : Infinity;

  async function worker() {
    for (;;) {
      if (performance.now() >= deadline) {
        capped = true;
        return;
      }
      const { value, done } = await nextLine();
      if (done) return;
      if (!value) continue;
      let token;
      try {
        token = JSON.parse(value).access_token;
      } catch {
        token = undefined;
      }
      if (typeof token !== 'string') {
        errors++;
        continue;
      }
      const t0 = performance.now();
      try {
        const res = await fetch(prefix + encodeURIComponent(token));
        const text = await res.text(); // read the body in full: the connection is then reused
        const doc = JSON.parse(text);
        if (res.status !== 200 || !doc.data || doc.data.is_valid !== true) errors++;
      } catch {
        errors++;
      }
      latencies.push(performance.now() - t0);
    }
  }

  await Promise.all(Array.from({ length: opts.conns }, worker));
  const seconds = (performance.now() - start) / 1000;
  const sorted = Float64Array.from(latencies).sort();
  const usage = process.resourceUsage();
  const round = (x, digits) => Number(x.toFixed(digits));
  process.stdout.write(
    JSON.stringify({
      requests: latencies.length,
      seconds: round(seconds, 3),
      rate: round(seconds > 0 ? latencies.length / seconds : 0, 1),
      p50_ms: round(percentile(sorted, 0.5), 3),
      p99_ms: round(percentile(sorted, 0.99), 3),
      errors,
      max_rss_kb: usage.maxRSS,
      cpu_user_s: round(usage.userCPUTime / 1e6, 3),
      cpu_system_s: round(usage.systemCPUTime / 1e6, 3),
      capped,
    }) + '\n',
  );
  // Leave at once: idle keep-alive sockets would otherwise hold the event loop for a few seconds.
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`node-worker: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
