// Unit tests of createTokenSource with a fake node-vault client and a fake
// Connect (no npm install needed): node --test app.test.js
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { createTokenSource, REPLACES_HEADER } = require('./app');

const PATH = 'instacart/creds/fulfillment';

// deferred is a promise the test resolves: the test's way to hold a call
// where it is and let it go on, as a channel does in the Go tests.
function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

// fakeVault answers node-vault's read/write like the engine behind
// app.hcl: each creds call mints tok-N with lease <path>/lease-N.
function fakeVault({ life = 3600e3, now = () => Date.now() } = {}) {
  const v = {
    calls: 0,
    events: [], // 'creds' and 'revoke <lease>', in order
    replaces: [], // each creds call's REPLACES_HEADER ('' without)
    revokeFails: false,
    sameToken: false, // mint tok-1 whatever
    gate: null, // a deferred each creds call waits for, if set
    arrived: null, // called when a creds call reaches the gate
    async creds(opts) {
      v.calls++;
      const n = v.calls;
      v.events.push('creds');
      v.replaces.push((opts && opts.headers && opts.headers[REPLACES_HEADER]) || '');
      if (v.gate) {
        if (v.arrived) v.arrived();
        await v.gate.promise;
      }
      return {
        lease_id: `${PATH}/lease-${n}`,
        lease_duration: life / 1000,
        data: { access_token: v.sameToken ? 'tok-1' : `tok-${n}`, expires_at: new Date(now() + life).toISOString() },
      };
    },
    read: (path, opts) => v.creds(opts),
    async write(path, data, opts) {
      const prefix = 'sys/leases/revoke/';
      if (path.startsWith(prefix)) {
        v.events.push(`revoke ${path.slice(prefix.length)}`);
        if (v.revokeFails) throw new Error('permission denied');
        return undefined;
      }
      return v.creds(opts);
    },
  };
  return v;
}

// fakeConnect is a fetch that answers 401 to the refused tokens and 200 to
// the others, recording each request's token and body.
function fakeConnect(refused) {
  const c = {
    tokens: [],
    bodies: [],
    hold: null, // a deferred the refused requests wait for, if set
    arrived: null,
    fetch: async (url, init) => {
      const tok = init.headers.Authorization.replace(/^Bearer /, '');
      c.tokens.push(tok);
      c.bodies.push(init.body);
      if (!refused.includes(tok)) return new Response('{}', { status: 200 });
      if (c.hold) {
        if (c.arrived) c.arrived();
        await c.hold.promise;
      }
      return new Response('{"errors":[{"message":"The access token is invalid, expired or revoked."}]}', { status: 401 });
    },
  };
  return c;
}

const post = (source, body = '{"n":1}') => source.fetch('http://connect.test/v2/fulfillment/users', { method: 'POST', body });

test('a 401 revokes the lease, reads once past the Proxy cache, and retries once', async () => {
  const vault = fakeVault();
  const connect = fakeConnect(['tok-1']);
  const source = createTokenSource({ vault, path: PATH, fetch: connect.fetch });
  assert.equal((await post(source)).status, 200);
  assert.deepEqual(connect.tokens, ['tok-1', 'tok-2']);
  assert.deepEqual(connect.bodies, ['{"n":1}', '{"n":1}']);
  assert.deepEqual(vault.events, ['creds', `revoke ${PATH}/lease-1`, 'creds']);
  assert.deepEqual(vault.replaces, ['', `${PATH}/lease-1`]);
  assert.equal((await post(source)).status, 200);
  assert.equal(vault.calls, 2);
  await source.close(); // lease-1 was revoked already
  assert.deepEqual(vault.events.slice(3), [`revoke ${PATH}/lease-2`]);
});

test('a second 401 is returned, not retried', async () => {
  const vault = fakeVault();
  const connect = fakeConnect(['tok-1', 'tok-2']);
  const source = createTokenSource({ vault, path: PATH, fetch: connect.fetch });
  assert.equal((await post(source)).status, 401);
  assert.deepEqual(connect.tokens, ['tok-1', 'tok-2']);
  assert.equal(vault.calls, 2);
});

test('concurrent 401s for one token share one fresh read', async () => {
  const n = 8;
  const vault = fakeVault();
  const connect = fakeConnect(['tok-1']);
  const source = createTokenSource({ vault, path: PATH, fetch: connect.fetch });
  await source.token();
  connect.hold = deferred();
  let reached = 0;
  const allSent = deferred();
  connect.arrived = () => { if (++reached === n) allSent.resolve(); };
  const results = Array.from({ length: n }, () => post(source));
  await allSent.promise; // every request went out with tok-1
  vault.gate = deferred();
  const readArrived = deferred();
  vault.arrived = readArrived.resolve;
  connect.hold.resolve(); // all n get their 401 now
  await readArrived.promise; // the fresh read is at Vault, held there
  vault.gate.resolve();
  const statuses = (await Promise.all(results)).map((r) => r.status);
  assert.deepEqual(statuses, Array(n).fill(200));
  assert.equal(vault.calls, 2);
  assert.deepEqual(vault.events.filter((e) => e.startsWith('revoke')), [`revoke ${PATH}/lease-1`]);
  assert.equal(connect.tokens.filter((t) => t === 'tok-2').length, n);
});

test('a failed revocation still reads, and says so', async () => {
  const vault = fakeVault();
  vault.revokeFails = true;
  const connect = fakeConnect(['tok-1']);
  const errors = [];
  const source = createTokenSource({ vault, path: PATH, fetch: connect.fetch, onError: (e) => errors.push(e.message) });
  assert.equal((await post(source)).status, 200);
  assert.deepEqual(vault.events, ['creds', `revoke ${PATH}/lease-1`, 'creds']);
  assert.match(errors[0], /revoking the lease .*permission denied.*reading a new token anyway/);
});

test('the same token served again: the 401 stands, and no read per request', async () => {
  let t = Date.parse('2026-01-01T00:00:00Z');
  const now = () => t;
  const vault = fakeVault({ now });
  vault.sameToken = true;
  const connect = fakeConnect(['tok-1']);
  const errors = [];
  const source = createTokenSource({ vault, path: PATH, fetch: connect.fetch, now, onError: (e) => errors.push(e.message) });
  assert.equal((await post(source)).status, 401);
  assert.equal(vault.calls, 2);
  assert.match(errors[0], /same token.*vault delete instacart\/cache\/fulfillment/);
  for (let i = 0; i < 3; i++) assert.equal((await post(source)).status, 401);
  assert.equal(vault.calls, 2);
  t += 30e3; // after the wait, an operator's flush is picked up
  vault.sameToken = false;
  assert.equal((await post(source)).status, 200);
  assert.equal(vault.calls, 3);
});

test('close leaves the leases alone with revokeOnClose false (behind a Proxy)', async () => {
  const vault = fakeVault();
  const source = createTokenSource({ vault, path: PATH, revokeOnClose: false });
  await source.token();
  await source.close();
  assert.deepEqual(vault.events, ['creds']);
});
