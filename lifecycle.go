package instacart

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// A token Connect issues to this engine is, at every moment, in one of these
// states, each recorded where the engine (or Vault) can find it again:
//
//	requested     a token request is in flight. Exclusive: a WAL intent and,
//	              for a code, its claim (codes/). Shared: the flight.
//	live          handed out or servable. Shared: stored at the key its role
//	              serves from (tokens/<role>/role, tokens/<role>/user-<hash>),
//	              for the current credentials and role definition. Exclusive:
//	              held by its lease (the lease carries its revocable identity).
//	out of service  never handed out again, still valid for leases that hold
//	              it: a shared token stored under tokens/<role>/ that its role
//	              no longer serves (superseded by a newer mint, minted for an
//	              earlier definition of the role, for a deleted role, or with
//	              credentials since rotated).
//	revoking      queued in revoking/<role>/ until Connect revokes or refuses
//	              it, or it expires.
//	revoked / expired  gone from storage (tidy removes expired tokens).
//
// Moves, and who makes them (docs/architecture.md draws them):
//
//	requested → live        publishShared (under the role lock, for the current
//	                        credentials and role) · exclusiveCreds (lease)
//	requested → revoking    discard: an unusable answer, a token too short to
//	                        lease, one that could not be stored or that
//	                        arrived after its reader left
//	live → out of service   publishShared storing its successor · a role edit
//	                        or delete · a config rotation or delete
//	live, out of service → revoking   flush (cache/<role>, also for deleted
//	                        roles) · an exclusive lease's revocation · WAL rollback
//	revoking → revoked      the revocation queue (revocation_queue.go), retried
//	                        every minute per role, each role on its own
//	any → expired           time; tidy removes what expired
//
// Every read answers with a live token, or with an out-of-service-but-not-yet
// flushed one only when it is still the token its role serves (the fallback
// while Connect is failing re-checks this under the role lock at answer time).
// A lease is renewed only while its token is live (renewal.go): the caches
// that renew leases then read creds again and move to the live token.

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
	e, err := b.getSnapshot(ctx, s)
	if err != nil {
		return false, err
	}
	return e.config.CredentialsID == m.credentialsID(), nil
}
