// Calls Instacart Connect with a token read from Vault with node-vault, and
// reads it again shortly before its expires_at: one Vault read (one lease) per
// token life instead of one per request. Prints counts, never the token.
//
//   npm ci
//   VAULT_ADDR=... VAULT_TOKEN=... CONNECT_URL=https://connect.dev.instacart.tools \
//     node app.js instacart/creds/fulfillment 300 30   # 300 calls over 30 seconds
'use strict';

const vault = require('node-vault')(); // VAULT_ADDR and VAULT_TOKEN from the environment

const [path, calls, overSeconds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
if (!path || !(calls > 0) || !(overSeconds > 0)) {
  console.error('usage: node app.js <creds path> <calls> <over seconds>');
  process.exit(2);
}
const EARLY_MS = 5 * 60 * 1000; // re-read 5 minutes before expiry (after 3/4 of a shorter life)

let current = null; // { token, expiresAt, refreshAt }
let reading = null; // the read in flight, shared by concurrent callers
let reads = 0;
const leases = []; // { id, endsAt }, to revoke at the end
const seen = new Set(); // distinct tokens, counted, never printed

async function read() {
  const secret = await vault.read(path); // each read creates a Vault lease
  const now = Date.now();
  const expiresAt = Date.parse(secret.data.expires_at);
  reads++;
  seen.add(secret.data.access_token);
  leases.push({ id: secret.lease_id, endsAt: now + secret.lease_duration * 1000 });
  if (current) {
    console.log(`read ${reads}: the previous token had ${((current.expiresAt - now) / 1000).toFixed(1)}s left`);
  }
  return { token: secret.data.access_token, expiresAt, refreshAt: expiresAt - Math.min(EARLY_MS, (expiresAt - now) / 4) };
}

async function token() {
  if (!current || Date.now() >= current.refreshAt) {
    reading = reading || read().finally(() => { reading = null; });
    try {
      current = await reading;
    } catch (err) {
      if (!current || Date.now() >= current.expiresAt) throw err;
      console.error(`re-reading ${path} failed, keeping the current token for now: ${err.message}`);
      current.refreshAt = Date.now() + 1000;
    }
  }
  return current.token;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

async function main() {
  const statuses = {};
  const start = Date.now();
  for (let i = 0; i < calls; i++) {
    await sleep(start + (i * overSeconds * 1000) / calls - Date.now());
    let status;
    try {
      const res = await fetch(`${process.env.CONNECT_URL}/v2/fulfillment/users`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${await token()}`, 'Content-Type': 'application/json' },
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
  console.log(`calls: ${calls}, vault reads: ${reads}, tokens: ${seen.size}, statuses: ${JSON.stringify(statuses)}`);
  // Revoke the leases still running (a shared token stays valid for its other holders).
  for (const lease of leases.filter((l) => l.endsAt > Date.now())) {
    await vault.revoke({ lease_id: lease.id });
  }
  process.exitCode = statuses[200] === calls ? 0 : 1;
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
