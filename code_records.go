package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// codeStoragePrefix remembers, by hash, the authorization codes already sent
// to Connect. A code is single-use: a client that retries a failed write (the
// Vault CLI and API client retry 5xx answers by themselves), or replays one,
// must get a 400 rather than have the code sent again, which Connect answers
// with invalid_grant and may treat as a replay of the tokens it issued.
const codeStoragePrefix = "codes/"

// codeRecordTTL is how long a sent code is remembered: well past the few
// minutes an OAuth authorization code lives (RFC 6749 §4.1.2).
const codeRecordTTL = time.Hour

type codeRecord struct {
	SentAt time.Time `json:"sent_at"`
}

func codeKey(code string) string {
	sum := sha256.Sum256([]byte(code))
	return codeStoragePrefix + hex.EncodeToString(sum[:])
}

// claimCode records code as sent, or reports that it already was.
func (b *backend) claimCode(ctx context.Context, s logical.Storage, code string) (claimed bool, err error) {
	b.codeMu.Lock()
	defer b.codeMu.Unlock()
	key := codeKey(code)
	prev, err := getJSON[codeRecord](ctx, s, key)
	if err != nil {
		return false, err
	}
	now := b.now()
	if prev != nil && now.Sub(prev.SentAt) < codeRecordTTL {
		return false, nil
	}
	if err := putJSON(ctx, s, key, codeRecord{SentAt: now}); err != nil {
		return false, err
	}
	return true, nil
}

// releaseCode forgets a code Connect provably did not process, so the caller
// may send it again.
func (b *backend) releaseCode(ctx context.Context, s logical.Storage, code string) {
	// The request may be over (it left while queued): the record goes anyway.
	if err := s.Delete(context.WithoutCancel(ctx), codeKey(code)); err != nil {
		b.Logger().Warn("could not release an authorization code that Connect did not process", "error", err)
	}
}

// pruneCodes drops code records past their TTL.
func (b *backend) pruneCodes(ctx context.Context, s logical.Storage) error {
	keys, err := s.List(ctx, codeStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing code records: %w", err)
	}
	now := b.now()
	for _, k := range keys {
		rec, err := getJSON[codeRecord](ctx, s, codeStoragePrefix+k)
		if err != nil {
			return err
		}
		if rec != nil && now.Sub(rec.SentAt) >= codeRecordTTL {
			if err := s.Delete(ctx, codeStoragePrefix+k); err != nil {
				return storageError("deleting code record", err)
			}
		}
	}
	return nil
}
