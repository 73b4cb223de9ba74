package instacart

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// walKindExclusiveToken marks write-ahead log entries of exclusive mints.
// An exclusive token is revoked only through its lease; if the plugin dies
// (or an error strikes) between the mint and the lease, the WAL entry is what
// lets Vault's rollback revoke it instead of leaving it live for a day.
const walKindExclusiveToken = "exclusive_token"

// walExclusiveToken is one entry. Before the mint it names only the role and
// credentials (there is no token yet to revoke); once Connect answers, a
// second entry with the token replaces it until the response is built.
type walExclusiveToken struct {
	Role   string `json:"role"`
	UserID string `json:"user_id,omitempty"`
	revocable
}

func putWAL(ctx context.Context, s logical.Storage, w *walExclusiveToken) (string, error) {
	id, err := framework.PutWAL(ctx, s, walKindExclusiveToken, w)
	if err != nil {
		return "", storageError("writing the write-ahead log", err)
	}
	return id, nil
}

// deleteWAL drops an entry that is no longer needed. A failure only means the
// rollback will look at it later, so it is logged, not returned.
// It runs even if the request was cancelled: the entry is done with either way.
func (b *backend) deleteWAL(ctx context.Context, s logical.Storage, id string) {
	if err := framework.DeleteWAL(context.WithoutCancel(ctx), s, id); err != nil {
		b.Logger().Debug("could not delete a write-ahead log entry; the rollback will", "error", err)
	}
}

// walRollback is Vault's rollback of an entry left behind (older than
// WALRollbackMinAge, 10 minutes by default): it revokes the token it names.
// A transient failure is returned so Vault tries again on its next pass.
func (b *backend) walRollback(ctx context.Context, req *logical.Request, kind string, data any) error {
	if kind != walKindExclusiveToken {
		return nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("encoding write-ahead log entry: %w", err)
	}
	var w walExclusiveToken
	if err := json.Unmarshal(raw, &w); err != nil {
		b.Logger().Warn("dropping an unreadable write-ahead log entry", "error", err)
		return nil
	}
	if w.AccessToken == "" {
		b.Logger().Warn("an exclusive mint was interrupted before Connect answered; a token Connect may have issued expires by itself", "role", w.Role)
		return nil
	}
	// Queued before it is tried, so a failure is retried by the queue, not
	// by Vault's rollback; only a failure to queue it keeps the WAL entry.
	if _, err := b.revokeSoon(ctx, req.Storage, pendingRevocation{Role: w.Role, UserID: w.UserID, revocable: w.revocable}, "minted but never leased"); err != nil {
		return err
	}
	b.Logger().Info("an exclusive token minted but never leased was revoked or queued for revocation", "role", w.Role)
	return nil
}
