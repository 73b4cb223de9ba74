package instacart

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// errCorrupt marks a storage entry that cannot be decoded: reading it again
// will not help.
var errCorrupt = errors.New("not a valid entry")

// getJSON reads and decodes one storage entry; nil when there is none.
func getJSON[T any](ctx context.Context, s logical.Storage, key string) (*T, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if entry == nil {
		return nil, nil
	}
	v := new(T)
	if err := entry.DecodeJSON(v); err != nil {
		return nil, fmt.Errorf("decoding %s: %w: %w", key, errCorrupt, err)
	}
	return v, nil
}

// putJSON encodes v and writes it at key.
func putJSON(ctx context.Context, s logical.Storage, key string, v any) error {
	entry, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return storageError("writing "+key, err)
	}
	return nil
}

// storageError wraps a storage failure with context, except a write refused
// by read-only storage (a performance standby or secondary): Vault must get
// logical.ErrReadOnly itself, which is how it knows to forward the request to
// the active node. Storage errors reach a plugin over gRPC as plain strings,
// so the match is by message.
func storageError(what string, err error) error {
	if isReadOnly(err) {
		return logical.ErrReadOnly
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isReadOnly(err error) bool {
	return err != nil && (errors.Is(err, logical.ErrReadOnly) || strings.Contains(err.Error(), logical.ErrReadOnly.Error()))
}
