// Calls Instacart Connect with a token read from Vault with node-vault, and
// reads it again shortly before it stops working: one Vault read (one lease)
// per token life instead of one per request. Prints counts, never the token.
//
//   npm ci
//   VAULT_ADDR=... VAULT_TOKEN=... CONNECT_URL=https://connect.dev.instacart.tools \
//     node app.js instacart/creds/fulfillment 300 30   # 300 calls over 30 seconds
//
// The Vault token needs examples/policies/app.hcl (for the role it reads) and
// nothing more. With a private CA, point NODE_EXTRA_CA_CERTS at its PEM file.
//
// Through Vault Proxy, set VAULT_AGENT_ADDR to its listener instead of
// VAULT_ADDR: the app then leaves the Proxy's shared lease alone on exit.
//
// createTokenSource() is the reusable part:
//
//   const { createTokenSource } = require('./app');
//   const source = createTokenSource({ vault, path: 'instacart/creds/fulfillment' });
//   const res = await source.fetch(url, { method: 'POST', body }); // on a 401: a new token, one retry
//   // or, setting the header yourself:
//   headers.Authorization = `Bearer ${await source.token()}`; // and source.invalidate(token) on a 401
//   ...
//   await source.close(); // revokes the leases it holds
'use strict';

const EARLY_MS = 5 * 60 * 1000; // re-read 5 minutes before the end (after 3/4 of a shorter life)
const REFUSED_RETRY_MS = 30 * 1000; // a refused token Vault serves again: read again for it after this
// Names the refused token's lease on the fresh read. Vault ignores it; Vault
// Proxy's cache keys on the whole request, so the read misses the cached
// entry that still holds the refused token (revoking a lease with its id in
// the URL does not evict it), and reaches Vault.
const REPLACES_HEADER = 'X-Tokensource-Replaces-Lease';

// createTokenSource returns { token, invalidate, fetch, close, stats } for a creds path:
// - token() resolves to the current access token, reading the path when there
//   is none or it is within earlyMs of its end; concurrent callers share one
//   read. A token's end is the earlier of its expires_at and its lease's end:
//   a role's ttl can cap the lease, and when a lease ends Vault revokes it
//   (an exclusive role's token at Connect too). A failed re-read keeps the
//   current token until that end, and is reported to onError.
// - invalidate(token): Connect answered 401 to token, so it is dead (an
//   operator flushed the role, say). If it is still the current token, its
//   lease is revoked (a failure goes to onError) and the path read once
//   more, past Vault Proxy's cache; concurrent calls for one token share that
//   read. Resolves true when the current token is now another one, false
//   when not (the read failed, or brought back the same token: then no read
//   for it again for 30 s; onError says why).
// - fetch(url, init) is fetch() with Authorization: Bearer <token>; on a 401
//   it invalidates the token and sends the request once more with the new
//   one (init.body must be a string or buffer to be sent twice). A second 401
//   is returned as it is, never retried.
// - close() revokes the leases still running, with the lease id in the URL
//   (PUT sys/leases/revoke/<lease_id>), which app.hcl allows for the role's
//   leases only; with revokeOnClose false (behind Vault Proxy, whose cached
//   lease every app shares) it leaves them.
// userId: for assertion roles with allowed_user_ids, written as user_id.
function createTokenSource({
  vault, path, userId, earlyMs = EARLY_MS, revokeOnClose = true,
  onError = () => {}, onNewToken = () => {}, fetch = globalThis.fetch, now = Date.now,
}) {
  let current = null; // { token, leaseId, endsAt, refreshAt }
  let reading = null; // the read in flight, shared by concurrent callers
  let healing = null; // { from: the refused token, done: its fresh read's outcome }
  let refused = null; // { token, until }: a fresh read brought back this refused token
  let reads = 0;
  let leases = []; // { id, endsAt }, to revoke on close
  const seen = new Set(); // distinct tokens, counted, never printed

  async function read(replacesLease) {
    const start = now();
    // Each read creates a Vault lease.
    const opts = replacesLease ? { headers: { [REPLACES_HEADER]: replacesLease } } : {};
    const secret = userId ? await vault.write(path, { user_id: userId }, opts) : await vault.read(path, opts);
    const at = now();
    let endsAt = Date.parse(secret.data.expires_at);
    if (secret.lease_duration > 0) endsAt = Math.min(endsAt, start + secret.lease_duration * 1000);
    if (!(endsAt > at)) throw new Error(`reading ${path}: the token's lease or life has already ended`);
    reads++;
    seen.add(secret.data.access_token);
    if (secret.lease_id) leases.push({ id: secret.lease_id, endsAt });
    onNewToken({ previousLeftMs: current ? current.endsAt - at : null });
    return {
      token: secret.data.access_token, leaseId: secret.lease_id, endsAt,
      refreshAt: endsAt - Math.min(earlyMs, (endsAt - at) / 4),
    };
  }

  // startRead reads (for a refused token `dead`: revokes its lease first and
  // reads past the Proxy's cache) and makes the result current.
  function startRead(dead) {
    const r = (async () => {
      if (dead && dead.leaseId) {
        try {
          await vault.write(`sys/leases/revoke/${dead.leaseId}`, {});
          leases = leases.filter((l) => l.id !== dead.leaseId);
        } catch (err) {
          onError(new Error(`revoking the lease of the token Connect refused: ${err.message}; reading a new token anyway`));
        }
      }
      current = await read(dead ? dead.leaseId || `${now()}-${Math.random()}` : null);
      return current;
    })().finally(() => { if (reading === r) reading = null; });
    reading = r;
    return r;
  }

  async function token() {
    if (current && now() < current.refreshAt) return current.token;
    const held = current;
    try {
      return (await (reading || startRead(null))).token;
    } catch (err) {
      if (!held || current !== held || now() >= held.endsAt) throw err;
      // The current token still works: try again in a second.
      onError(new Error(`re-reading failed, keeping the current token for now: ${err.message}`));
      held.refreshAt = now() + 1000;
      return held.token;
    }
  }

  async function invalidate(tok) {
    if (healing && healing.from === tok) return healing.done;
    if (reading && current && current.token === tok) {
      await reading.catch(() => {}); // a re-read in flight may replace it
      if (healing && healing.from === tok) return healing.done;
    }
    if (!current || current.token !== tok) return true;
    if (refused && refused.token === tok && now() < refused.until) return false;
    const dead = current;
    current = null; // callers wait for the fresh read instead of getting the refused token
    const h = { from: tok };
    h.done = startRead(dead).then(
      (next) => {
        if (next.token !== tok) return true;
        refused = { token: tok, until: now() + REFUSED_RETRY_MS };
        onError(new Error(`Connect refused the token from ${path}, and a fresh read returned the same token: ` +
          `the engine still serves it (an operator replaces it with vault delete ${path.replace('/creds/', '/cache/')})`));
        return false;
      },
      (err) => { onError(err); return false; },
    ).finally(() => { if (healing === h) healing = null; });
    healing = h;
    return h.done;
  }

  function withToken(init, tok) {
    return { ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${tok}` } };
  }

  async function fetchWithToken(url, init = {}) {
    const tok = await token();
    const res = await fetch(url, withToken(init, tok));
    if (res.status !== 401 || !(await invalidate(tok))) return res;
    const next = await token().catch(() => tok);
    if (next === tok) return res;
    await res.arrayBuffer().catch(() => {}); // drop the 401
    return fetch(url, withToken(init, next));
  }

  async function close() {
    const live = leases.filter((l) => l.endsAt > now());
    leases = [];
    current = null;
    if (!revokeOnClose) return;
    for (const lease of live) {
      await vault.write(`sys/leases/revoke/${lease.id}`, {});
    }
  }

  return { token, invalidate, fetch: fetchWithToken, close, stats: () => ({ reads, tokens: seen.size }) };
}

module.exports = { createTokenSource, REPLACES_HEADER };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

async function main() {
  const [path, calls, overSeconds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
  if (!path || !(calls > 0) || !(overSeconds > 0)) {
    console.error('usage: node app.js <creds path> <calls> <over seconds>');
    process.exit(2);
  }
  // Through Vault Agent or Proxy: VAULT_AGENT_ADDR, as Vault's Go client reads
  // it (node-vault does not). Then leave VAULT_TOKEN unset when the Proxy adds
  // its own, and keep the Proxy's shared cached lease on exit.
  const proxy = process.env.VAULT_AGENT_ADDR;
  const vault = require('node-vault')(proxy ? { endpoint: proxy } : {}); // else VAULT_ADDR; VAULT_TOKEN
  const source = createTokenSource({
    vault,
    path,
    revokeOnClose: !proxy,
    onError: (err) => console.error(`${path}: ${err.message}`), // names no token
    onNewToken: ({ previousLeftMs }) => {
      if (previousLeftMs !== null) {
        console.log(`read ${source.stats().reads}: the previous token had ${(previousLeftMs / 1000).toFixed(1)}s left`);
      }
    },
  });
  const statuses = {};
  const start = Date.now();
  for (let i = 0; i < calls; i++) {
    await sleep(start + (i * overSeconds * 1000) / calls - Date.now());
    let status;
    try {
      const res = await source.fetch(`${process.env.CONNECT_URL}/v2/fulfillment/users`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user_id: 'johnsmith6000', first_name: 'john', last_name: 'smith' }),
      });
      await res.arrayBuffer();
      status = res.status;
    } catch (err) {
      status = 'error';
      if (!statuses.error) console.error(err.message); // names no token
    }
    statuses[status] = (statuses[status] || 0) + 1;
  }
  const { reads, tokens } = source.stats();
  console.log(`calls: ${calls}, vault reads: ${reads}, tokens: ${tokens}, statuses: ${JSON.stringify(statuses)}`);
  // Revoke the leases still running (a shared token stays valid for its other holders), unless behind a Proxy.
  await source.close();
  process.exitCode = statuses[200] === calls ? 0 : 1;
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
