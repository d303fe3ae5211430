// A proxyless gRPC client for server/tests/proxyless.rs: @grpc/grpc-js with
// @grpc/grpc-js-xds's xDS resolver.
//
// Opens one channel to TARGET (default xds:///payments:8080); grpc-js-xds reads the bootstrap
// named by GRPC_XDS_BOOTSTRAP. Then reads commands on stdin, one per line, and answers each
// with one JSON line on stdout, on the same channel (so the test drives phases without
// reconnecting):
//
//     call N [HEADER=VALUE ...]
//         N unary calls to /echo.Echo/Who, one after the other, with those metadata.
//         -> {"counts": {"v1": 812, ...}, "errors": {"UNAVAILABLE: ...": 3}, "ms": 1234}
//
// Every call waits for the channel to be ready (the first one waits for xDS configuration)
// and has a deadline; a command stops early when it has run for longer than COMMAND_BUDGET.
// Exits on EOF. Modules are found through NODE_PATH (the test points it at the installed
// node_modules).
//
// Usage: node client.js [TARGET]
'use strict';

const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

const METHOD = '/echo.Echo/Who';
const CALL_DEADLINE_MS = 5000;
const COMMAND_BUDGET_MS = 60000;
const MAX_CALLS = 100000;

xds.register();
const target = process.argv[2] || 'xds:///payments:8080';
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const identity = (b) => b;

function callOnce(metadata) {
  return new Promise((resolve) => {
    const options = { deadline: Date.now() + CALL_DEADLINE_MS, waitForReady: true };
    client.makeUnaryRequest(METHOD, identity, identity, Buffer.alloc(0), metadata, options, (err, reply) => {
      if (err) {
        resolve({ error: `${grpc.status[err.code] || err.code}: ${err.details}`.slice(0, 300) });
      } else {
        resolve({ name: reply.toString('utf8') });
      }
    });
  });
}

async function runCalls(n, pairs) {
  const counts = {};
  const errors = {};
  const start = Date.now();
  for (let i = 0; i < Math.min(n, MAX_CALLS); i++) {
    if (Date.now() - start > COMMAND_BUDGET_MS) {
      errors['budget exceeded'] = (errors['budget exceeded'] || 0) + 1;
      break;
    }
    const metadata = new grpc.Metadata();
    for (const [k, v] of pairs) metadata.add(k, v);
    const r = await callOnce(metadata);
    if (r.error !== undefined) errors[r.error] = (errors[r.error] || 0) + 1;
    else counts[r.name] = (counts[r.name] || 0) + 1;
  }
  return { counts, errors, ms: Date.now() - start };
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    const words = line.trim().split(/\s+/).filter((w) => w.length > 0);
    if (words.length === 0) continue;
    let out;
    if (words[0] === 'call' && words.length >= 2 && /^\d+$/.test(words[1])) {
      const pairs = words.slice(2).map((w) => {
        const i = w.indexOf('=');
        return i < 0 ? [w.toLowerCase(), ''] : [w.slice(0, i).toLowerCase(), w.slice(i + 1)];
      });
      out = await runCalls(Number(words[1]), pairs);
    } else {
      out = { error: `unknown command: ${line.trim()}` };
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  client.close();
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`client.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
