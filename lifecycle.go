package instacart

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// The token lifecycle, said once: docs/architecture.md points here, and
// TestLifecycleTableNamesLiveFunctions fails when a function named below,
// each followed by its file in parentheses, is no longer declared there.
//
// A token Connect issues to this engine is, at every moment, in one of these
// states, each recorded where the engine (or Vault) finds it again:
//
//	requested       a token request is in flight. Exclusive: a WAL intent
//	                (wal/<id>) and, for a code, its claim (codes/). Shared:
//	                the mint's flight, in memory.
//	live            shared: stored at the key its role serves from
//	                (tokens/<role>/role, users/<role>/<shard>/<user hash>),
//	                minted with the current credentials for the current
//	                definition of the role. Exclusive: held by its lease.
//	out of service  a shared token stored under its role that the role no
//	                longer serves: superseded (old-<hash> beside its
//	                successor), or minted for an earlier definition of the
//	                role, for a deleted role, or with credentials since
//	                rotated. Never handed out; valid for the leases holding it.
//	revoking        queued at revoking/<role>/<shard>/<id> until Connect
//	                revokes or refuses it, or it expires.
//	revoked         Connect revoked it (or refused to, for good): gone.
//	expired         past its expiry: nothing left to revoke.
//
// Moves, each with the function that makes it and its file:
//
//	requested → live
//	  publishShared (shared_token.go): a shared token, under the role lock,
//	    only for the current role definition and credentials
//	  exclusiveCreds (exclusive_token.go): an exclusive token, as its lease
//	    is built
//	requested → revoking, always through revokeSoon (revocation_queue.go)
//	  mintInSlot (mint.go): an unusable answer
//	  publishMinted (shared_token.go): under a second to live, or not stored
//	  mintDetached (mint.go): its reader left before Connect answered
//	  exclusiveCreds (exclusive_token.go): not recorded in the WAL, too short
//	    to lease, or the response could not be completed
//	  walRollback (wal.go): minted, but the plugin died before the lease
//	  configure (config_write.go): the token that verified credentials
//	live → out of service
//	  publishShared (shared_token.go): its successor stored, it kept at
//	    old-<hash> while still valid
//	  writeRole, deleteRole (role_write.go): a role edit or delete; memory
//	    forgets (forgetRoleTokens (tidy.go)), storage stays as it is
//	  writeConfig, deleteConfig (config_write.go): a rotation or a config
//	    delete; stored tokens keep the old credentials id
//	live, out of service → revoking
//	  takeOutOfService (flush.go): DELETE cache/<role> (flushRole (flush.go)),
//	    deleted roles too; all or nothing, under the role lock
//	  tokenRevoke (secret_token.go): an exclusive lease revoked or expired,
//	    through revokeNow (revocation_queue.go)
//	revoking → revoked, each attempt one revokeUpstream (revoke.go)
//	  revokeOnce (revocation_queue.go): the first attempt, under the entry's
//	    claim, by whoever queued it
//	  drainQueue (revocation_pass.go): a pass over one role's queue, by the
//	    flush, and every minute by retryRevocations (revocation_queue.go)
//	revoking → live, out of service
//	  revokeOnce (revocation_queue.go), tryQueued (revocation_pass.go): the
//	    entry is dropped while its key still holds the token (stillServed
//	    (revocation_queue.go)): a delete or a publish that failed yet landed
//	any → expired: time
//	  removeIfStale (tidy.go): tidy removes it from storage
//	  forgetExpired (token_cache.go): dropped from memory
//	  nothingToRevoke (revoke.go): dropped from the queue without a call
//
// Not a move: moveLegacyToken (legacy_layout.go) moves a per-user token
// from the previous release's tokens/<role>/user-<hash> to its users/ key,
// live or out of service as it was (dropped if expired).
//
// Every read answers with a live token: sharedToken (shared_token.go) hands
// out what its role serves, and fallback (shared_token.go), serving a token
// past its refresh point while Connect fails, re-checks under the role lock
// at answer time that it is still live and leasable. A shared lease is
// renewed only while its token is live, an exclusive one only while it is
// not queued: renewable, exclusiveRenewable (renewal.go); a holder refused
// reads creds again and gets the live token.

// revocable is what revoking a token needs: the credentials that minted it
// (which name the host) and the token itself, with its expiry (a token past
// it needs no call). Stored records embed it, so its JSON names are fixed.
type revocable struct {
	CredentialsID string    `json:"credentials_id"`
	AccessToken   string    `json:"access_token,omitempty"`
	ExpiresAt     time.Time `json:"expires_at,omitzero"`
}

// expired reports whether the token needs no revocation any more.
func (r revocable) expired(now time.Time) bool { return !now.Before(r.ExpiresAt) }

// revocableToken is the identity of a token Connect just issued with credentialsID.
func revocableToken(credentialsID string, t *connect.Token) revocable {
	return revocable{CredentialsID: credentialsID, AccessToken: t.AccessToken, ExpiresAt: t.ExpiresAt}
}

// mintRequest is one token request as it travels through the engine: the
// role (its name and the definition read), the user of a per-user token,
// the code of an authorization_code read, and the configuration snapshot
// whose credentials mint it. Its deadline is the caller's context.
type mintRequest struct {
	roleName string
	role     *role
	userID   string
	code     string
	snap     *configSnapshot
}

// clone is a copy of m that may outlive its caller.
func (m *mintRequest) clone() *mintRequest {
	c := *m
	return &c
}

// credentialsID names the credentials the request mints with.
func (m *mintRequest) credentialsID() string { return m.snap.config.CredentialsID }

// key is the storage key a shared token for the request lives at.
func (m *mintRequest) key() string { return tokenKey(m.roleName, m.userID) }

// connectRequest is what is sent to Connect.
func (m *mintRequest) connectRequest() connect.TokenRequest {
	return connect.TokenRequest{
		GrantType:   m.role.GrantType,
		Scopes:      m.role.Scopes,
		UserID:      m.userID,
		Code:        m.code,
		RedirectURI: m.role.RedirectURI,
	}
}

// issued wraps a token Connect answered the request with.
func (m *mintRequest) issued(t *connect.Token) *issuedToken {
	return newIssuedToken(t, m.userID, m.credentialsID(), m.role.hash)
}

// serves reports whether t is what this request's role serves now: minted
// with the request's credentials for the request's definition of the role.
func (m *mintRequest) serves(t *issuedToken) bool {
	return t.belongsTo(m.credentialsID(), m.role.hash)
}

// currentFor reports, under the role lock, whether m's role definition and
// credentials are still the current ones: a token minted for a superseded
// role or configuration must not become live.
func (b *backend) currentFor(ctx context.Context, s logical.Storage, m *mintRequest) (bool, error) {
	current, err := b.getRoleLocked(ctx, s, m.roleName)
	if err != nil || current == nil || current.hash != m.role.hash {
		return false, err
	}
	snap, err := b.getSnapshot(ctx, s)
	if err != nil {
		return false, err
	}
	return snap.config.CredentialsID == m.credentialsID(), nil
}
