package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// revokingStoragePrefix holds shared tokens a flush took out of service but
// Connect has not yet confirmed revoked: revoking/<role>/<id>. They are never
// handed out again. The flush that queued them, the next flush of the role
// and the periodic function retry them until Connect revokes or refuses them,
// or they expire.
const revokingStoragePrefix = "revoking/"

type pendingRevocation struct {
	Role          string    `json:"role"`
	UserID        string    `json:"user_id,omitempty"`
	CredentialsID string    `json:"credentials_id"`
	AccessToken   string    `json:"access_token"`
	ExpiresAt     time.Time `json:"expires_at"`
}

func (p *pendingRevocation) describe() string {
	return (&issuedToken{UserID: p.UserID}).describe()
}

func pendingKey(role, token string) string {
	sum := sha256.Sum256([]byte(token))
	return revokingStoragePrefix + role + "/" + hex.EncodeToString(sum[:16])
}

// queueRevocation records t as awaiting revocation.
func queueRevocation(ctx context.Context, s logical.Storage, role string, t *issuedToken) error {
	p := pendingRevocation{Role: role, UserID: t.UserID, CredentialsID: t.CredentialsID, AccessToken: t.AccessToken, ExpiresAt: t.ExpiresAt}
	return putJSON(ctx, s, pendingKey(role, t.AccessToken), p)
}

// revokePending tries every pending revocation of a role. A token revoked,
// expired or refused for good leaves the queue; refused and pending describe
// the tokens Connect refused and those still waiting. With stopEarly, the
// pass ends at the first transient failure (Connect is down: try later).
func (b *backend) revokePending(ctx context.Context, s logical.Storage, role string, stopEarly bool) (refused, pending []string, err error) {
	prefix := revokingStoragePrefix + role + "/"
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, nil, fmt.Errorf("listing pending revocations: %w", err)
	}
	for _, k := range keys {
		p, err := getJSON[pendingRevocation](ctx, s, prefix+k)
		if err != nil {
			return refused, pending, err
		}
		if p == nil {
			continue
		}
		permanent, err := b.revokeUpstream(withRevokeRole(ctx, role), s, p.CredentialsID, p.AccessToken, p.ExpiresAt)
		switch {
		case err == nil:
		case permanent:
			refused = append(refused, p.describe())
			b.Logger().Warn("Connect refused to revoke a flushed token; it stays live until it expires", "role", role, "expires_at", p.ExpiresAt, "error", err)
		default:
			pending = append(pending, p.describe())
			b.Logger().Warn("could not revoke a flushed token for now; it is no longer handed out and will be retried", "role", role, "error", err)
			if stopEarly {
				return refused, pending, nil
			}
			continue
		}
		if err := s.Delete(ctx, prefix+k); err != nil {
			return refused, pending, storageError("deleting pending revocation", err)
		}
	}
	return refused, pending, nil
}

// retryPendingRevocations is the periodic function's pass over every role.
func (b *backend) retryPendingRevocations(ctx context.Context, s logical.Storage) error {
	roles, err := s.List(ctx, revokingStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing pending revocations: %w", err)
	}
	for _, r := range roles {
		_, pending, err := b.revokePending(ctx, s, strings.TrimSuffix(r, "/"), true)
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return nil // Connect is failing; the next pass tries again
		}
	}
	return nil
}
