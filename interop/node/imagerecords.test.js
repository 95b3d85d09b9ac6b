'use strict';

// Interop test: a Node.js @grpc/grpc-js client against the real imagerecordsd
// binary, started in --simulate mode on a free loopback port.
//
//   IMAGERECORDSD=/path/to/imagerecordsd npm test

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const SERVICE_PROTO = 'ecd/imagerecords/v1/image_records.proto';
const HEALTH_PROTO = path.join(__dirname, 'health.proto');

// keepCase: field names as in the .proto (region_id, not regionId).
// longs/enums as strings, defaults so that an empty token is '' rather than
// missing.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

const STARTUP_TIMEOUT_MS = 30_000;
const CALL_TIMEOUT_MS = 30_000;
// The server drains for up to --shutdown-grace (15s by default) on SIGTERM.
const EXIT_TIMEOUT_MS = 30_000;

const REGION = 'cn-hangzhou';
// Records per simulated desktop, in the order of the log's desktop_ids.
const SIMULATED_RECORDS = [1234, 250, 101, 100, 42, 7, 1, 0];

function loadPackage(file, includeDirs) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs }));
}

// startServer spawns `$IMAGERECORDSD --simulate --listen 127.0.0.1:0` and
// resolves once its JSON log on stderr has told both the simulated desktops
// and the address it serves on.
function startServer(binary) {
  return new Promise((resolve, reject) => {
    // IMAGERECORDS_<FLAG> variables set the server's flags; keep the
    // caller's (e.g. IMAGERECORDS_LOG_LEVEL=error) out of this run.
    const env = { ...process.env };
    for (const name of Object.keys(env)) {
      if (name.startsWith('IMAGERECORDS_')) delete env[name];
    }
    const child = spawn(binary, ['--simulate', '--listen', '127.0.0.1:0'], {
      stdio: ['ignore', 'ignore', 'pipe'], // stdout is a human banner
      env,
    });
    const logLines = [];
    const server = {
      child,
      logLines,
      // Resolves with { code, signal } once the process has exited and its
      // stderr is fully read.
      closed: new Promise((res) => child.once('close', (code, signal) => res({ code, signal }))),
      log: () => logLines.join('\n'),
      running: () => child.exitCode === null && child.signalCode === null,
    };
    let simulator = null;
    let addr = null;
    let settled = false;
    const fail = (message) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (server.running()) child.kill('SIGKILL');
      reject(new Error(`${message}\n--- ${binary} stderr ---\n${server.log()}`));
    };
    const timer = setTimeout(
      () => fail(`no "simulator started" and "serving" log lines within ${STARTUP_TIMEOUT_MS} ms`),
      STARTUP_TIMEOUT_MS,
    );
    child.once('error', (err) => fail(`cannot run ${binary}: ${err.message}`));
    child.once('exit', (code, signal) => fail(`${binary} exited before serving (code ${code}, signal ${signal})`));

    readline.createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => {
      logLines.push(line);
      if (logLines.length > 500) logLines.shift();
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return; // not a log object: kept for diagnostics only
      }
      if (entry.msg === 'simulator started') simulator = entry;
      if (entry.msg === 'serving') addr = entry.addr;
      if (simulator && addr && !settled) {
        settled = true;
        clearTimeout(timer);
        resolve({ ...server, simulator, addr });
      }
    });
  });
}

function callOptions() {
  return { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, callOptions(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function stream(client, request) {
  const messages = [];
  for await (const message of client.StreamImageModifiedRecords(request, callOptions())) {
    messages.push(message);
  }
  return messages;
}

// updateTime is a record's update_time in nanoseconds since the epoch.
function updateTime(record) {
  assert.ok(record.update_time, `record without update_time: ${JSON.stringify(record)}`);
  return BigInt(record.update_time.seconds) * 1_000_000_000n + BigInt(record.update_time.nanos);
}

// recordKey identifies a record: the simulator's records differ in
// (image_id, new_image_id, update_time).
function recordKey(record) {
  return `${record.image_id}|${record.new_image_id}|${updateTime(record)}`;
}

function assertNonDecreasingTimes(records) {
  for (let i = 1; i < records.length; i++) {
    assert.ok(
      updateTime(records[i - 1]) <= updateTime(records[i]),
      `update_time goes back at record ${i}: ${JSON.stringify(records[i - 1].update_time)} > ${JSON.stringify(records[i].update_time)}`,
    );
  }
}

function assertGrpcCode(code) {
  return (err) => {
    assert.ok(err instanceof Error, `expected a gRPC error, got ${err}`);
    assert.equal(err.code, code, `gRPC status ${err.code} (${grpc.status[err.code]}): ${err.details}`);
    return true;
  };
}

const BINARY = process.env.IMAGERECORDSD;
if (!BINARY) {
  throw new Error('IMAGERECORDSD is not set: point it at an imagerecordsd binary, e.g. ' +
    '(cd ../.. && go build -o imagerecordsd ./cmd/imagerecordsd) && IMAGERECORDSD=../../imagerecordsd npm test');
}

describe('imagerecordsd over gRPC (grpc-js)', () => {
  let server;
  let client;
  let health;
  let desktops;

  before(async () => {
    server = await startServer(path.resolve(BINARY));
    desktops = server.simulator.desktop_ids;
    assert.equal(server.simulator.region, REGION);
    assert.equal(desktops.length, SIMULATED_RECORDS.length, `desktop_ids: ${JSON.stringify(desktops)}`);

    const api = loadPackage(SERVICE_PROTO, [PROTO_DIR]).ecd.imagerecords.v1;
    const healthApi = loadPackage(HEALTH_PROTO, [__dirname]).grpc.health.v1;
    const credentials = grpc.credentials.createInsecure(); // h2c
    client = new api.ImageRecordsService(server.addr, credentials);
    health = new healthApi.Health(server.addr, credentials);
  });

  after(() => {
    client?.close();
    health?.close();
    if (server?.running()) server.child.kill('SIGKILL');
  });

  it('lists a page of 5 and follows next_page_token to 5 other records', async () => {
    const first = await unary(client, 'ListImageModifiedRecords', {
      region_id: REGION,
      desktop_id: desktops[0],
      page_size: 5,
    });
    assert.equal(first.records.length, 5);
    assert.equal(first.total_count, 1234);
    assert.notEqual(first.next_page_token, '');
    assert.notEqual(first.request_id, '');
    for (const record of first.records) {
      assert.ok(record.update_time, `record without update_time: ${JSON.stringify(record)}`);
      assert.ok(BigInt(record.update_time.seconds) > 0n, `update_time ${JSON.stringify(record.update_time)}`);
      assert.notEqual(record.image_id, '');
      assert.notEqual(record.new_image_id, '');
      assert.match(record.status, /^IMAGE_MODIFICATION_STATUS_/);
    }
    assertNonDecreasingTimes(first.records);

    const second = await unary(client, 'ListImageModifiedRecords', {
      region_id: REGION,
      desktop_id: desktops[0],
      page_size: 5,
      page_token: first.next_page_token,
    });
    assert.equal(second.records.length, 5);
    assert.equal(second.total_count, 1234);
    assert.notEqual(second.next_page_token, '');
    assert.notEqual(second.next_page_token, first.next_page_token);
    const firstKeys = new Set(first.records.map(recordKey));
    for (const record of second.records) {
      assert.ok(!firstKeys.has(recordKey(record)), `record repeated on the next page: ${recordKey(record)}`);
    }
    assertNonDecreasingTimes([...first.records, ...second.records]);
  });

  it('reports the total_count of every simulated desktop', async () => {
    for (const [i, desktop] of desktops.entries()) {
      const page = await unary(client, 'ListImageModifiedRecords', {
        region_id: REGION,
        desktop_id: desktop,
        page_size: 100,
      });
      assert.equal(page.total_count, SIMULATED_RECORDS[i], `total_count of ${desktop}`);
      assert.equal(page.records.length, Math.min(100, SIMULATED_RECORDS[i]), `records of ${desktop}`);
      assert.equal(page.next_page_token === '', SIMULATED_RECORDS[i] <= 100, `next_page_token of ${desktop}`);
    }
  });

  it('streams all 1234 records of the first desktop in 13 messages', async () => {
    const messages = await stream(client, { region_id: REGION, desktop_id: desktops[0] });
    assert.equal(messages.length, 13);
    const records = messages.flatMap((m) => m.records);
    assert.equal(records.length, 1234);
    for (const [i, message] of messages.entries()) {
      assert.equal(message.records.length, i < 12 ? 100 : 34, `records in message ${i}`);
      assert.equal(message.total_count, 1234, `total_count of message ${i}`);
      assert.notEqual(message.request_id, '', `request_id of message ${i}`);
      if (i < messages.length - 1) {
        assert.notEqual(message.resume_token, '', `resume_token of message ${i}`);
      } else {
        assert.equal(message.resume_token, '', 'resume_token of the last message');
      }
    }
    assert.equal(new Set(records.map(recordKey)).size, 1234, 'distinct (image_id, new_image_id, update_time)');
    assertNonDecreasingTimes(records);
  });

  it('stops at max_records and resumes from resume_token with nothing lost or repeated', async () => {
    const head = await stream(client, { region_id: REGION, desktop_id: desktops[0], max_records: 150 });
    const headRecords = head.flatMap((m) => m.records);
    assert.equal(headRecords.length, 150);
    const resumeToken = head.at(-1).resume_token;
    assert.notEqual(resumeToken, '', 'resume_token after max_records');

    const tail = await stream(client, { region_id: REGION, desktop_id: desktops[0], page_token: resumeToken });
    const tailRecords = tail.flatMap((m) => m.records);
    assert.equal(tailRecords.length, 1084);
    assert.equal(tail.at(-1).resume_token, '', 'resume_token of the last message');

    const headKeys = new Set(headRecords.map(recordKey));
    for (const record of tailRecords) {
      assert.ok(!headKeys.has(recordKey(record)), `record streamed twice: ${recordKey(record)}`);
    }
    const all = [...headRecords, ...tailRecords];
    assert.equal(new Set(all.map(recordKey)).size, 1234);
    assertNonDecreasingTimes(all);
  });

  it('rejects page_size 101 and a malformed desktop id with INVALID_ARGUMENT', async () => {
    await assert.rejects(
      unary(client, 'ListImageModifiedRecords', { region_id: REGION, desktop_id: desktops[0], page_size: 101 }),
      assertGrpcCode(grpc.status.INVALID_ARGUMENT),
    );
    await assert.rejects(
      unary(client, 'ListImageModifiedRecords', { region_id: REGION, desktop_id: 'not-a-desktop', page_size: 5 }),
      assertGrpcCode(grpc.status.INVALID_ARGUMENT),
    );
    assert.equal(grpc.status.INVALID_ARGUMENT, 3);
  });

  it('answers grpc.health.v1.Health/Check with SERVING', async () => {
    const response = await unary(health, 'Check', { service: '' });
    assert.equal(response.status, 'SERVING');
  });

  it('exits with code 0 on SIGTERM', async () => {
    client.close();
    health.close();
    assert.ok(server.running(), `the server died during the tests:\n${server.log()}`);
    server.child.kill('SIGTERM');
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no exit within ${EXIT_TIMEOUT_MS} ms of SIGTERM`)), EXIT_TIMEOUT_MS);
    });
    const { code, signal } = await Promise.race([server.closed, timeout]).finally(() => clearTimeout(timer));
    assert.equal(signal, null, `killed by ${signal}:\n${server.log()}`);
    assert.equal(code, 0, `exit code ${code}:\n${server.log()}`);
  });
});
