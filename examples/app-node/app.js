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
// createTokenSource() is the reusable part:
//
//   const { createTokenSource } = require('./app');
//   const source = createTokenSource({ vault, path: 'instacart/creds/fulfillment' });
//   headers.Authorization = `Bearer ${await source.token()}`;
//   ...
//   await source.close(); // revokes the leases it holds
'use strict';

const EARLY_MS = 5 * 60 * 1000; // re-read 5 minutes before the end (after 3/4 of a shorter life)

// createTokenSource returns { token, close, stats } for a creds path:
// - token() resolves to the current access token, reading the path when there
//   is none or it is within EARLY_MS of its end; concurrent callers share one
//   read. A token's end is the earlier of its expires_at and its lease's end:
//   a role's ttl can cap the lease, and when a lease ends Vault revokes it
//   (an exclusive role's token at Connect too). A failed re-read keeps the
//   current token until that end, and is reported to onError.
// - close() revokes the leases still running, with the lease id in the URL
//   (PUT sys/leases/revoke/<lease_id>), which app.hcl allows for the role's
//   leases only.
// userId: for assertion roles with allowed_user_ids, written as user_id.
function createTokenSource({ vault, path, userId, earlyMs = EARLY_MS, onError = () => {}, onNewToken = () => {} }) {
  let current = null; // { token, endsAt, refreshAt }
  let reading = null; // the read in flight, shared by concurrent callers
  let reads = 0;
  const leases = []; // { id, endsAt }, to revoke on close
  const seen = new Set(); // distinct tokens, counted, never printed

  async function read() {
    const start = Date.now();
    // Each read creates a Vault lease.
    const secret = userId ? await vault.write(path, { user_id: userId }) : await vault.read(path);
    const now = Date.now();
    let endsAt = Date.parse(secret.data.expires_at);
    if (secret.lease_duration > 0) endsAt = Math.min(endsAt, start + secret.lease_duration * 1000);
    if (!(endsAt > now)) throw new Error(`reading ${path}: the token's lease or life has already ended`);
    reads++;
    seen.add(secret.data.access_token);
    if (secret.lease_id) leases.push({ id: secret.lease_id, endsAt });
    onNewToken({ previousLeftMs: current ? current.endsAt - now : null });
    return { token: secret.data.access_token, endsAt, refreshAt: endsAt - Math.min(earlyMs, (endsAt - now) / 4) };
  }

  async function token() {
    if (!current || Date.now() >= current.refreshAt) {
      reading = reading || read().finally(() => { reading = null; });
      try {
        current = await reading;
      } catch (err) {
        if (!current || Date.now() >= current.endsAt) throw err;
        onError(err); // the current token still works: try again in a second
        current.refreshAt = Date.now() + 1000;
      }
    }
    return current.token;
  }

  async function close() {
    const live = leases.filter((l) => l.endsAt > Date.now());
    leases.length = 0;
    current = null;
    for (const lease of live) {
      await vault.write(`sys/leases/revoke/${lease.id}`, {});
    }
  }

  return { token, close, stats: () => ({ reads, tokens: seen.size }) };
}

module.exports = { createTokenSource };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

async function main() {
  const [path, calls, overSeconds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
  if (!path || !(calls > 0) || !(overSeconds > 0)) {
    console.error('usage: node app.js <creds path> <calls> <over seconds>');
    process.exit(2);
  }
  const vault = require('node-vault')(); // VAULT_ADDR and VAULT_TOKEN from the environment
  const source = createTokenSource({
    vault,
    path,
    onError: (err) => console.error(`re-reading ${path} failed, keeping the current token for now: ${err.message}`),
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
      const res = await fetch(`${process.env.CONNECT_URL}/v2/fulfillment/users`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${await source.token()}`, 'Content-Type': 'application/json' },
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
  // Revoke the leases still running (a shared token stays valid for its other holders).
  await source.close();
  process.exitCode = statuses[200] === calls ? 0 : 1;
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
