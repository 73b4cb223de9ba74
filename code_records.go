package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// codeStoragePrefix remembers, by hash, the authorization codes already sent
// to Connect. A code is single-use: a client that retries a failed write (the
// Vault CLI and API client retry 5xx answers by themselves), or replays one,
// must get a 400 rather than have the code sent again, which Connect answers
// with invalid_grant and may treat as a replay of the tokens it issued.
//
// Records are bucketed by the UTC hour they were sent in,
// codes/<yyyymmddhh>/<sha256 of the code>, so pruning drops a whole hour that
// can no longer hold a live record by listing it and deleting its keys,
// without reading a single record. Records written before buckets existed sit
// directly under the prefix, codes/<sha256>; they are still honoured and are
// read and pruned one by one (they are all gone an hour after an upgrade).
const codeStoragePrefix = "codes/"

// codeRecordTTL is how long a sent code is remembered: well past the few
// minutes an OAuth authorization code lives (RFC 6749 §4.1.2). A record
// counts while now − sent_at < codeRecordTTL.
const codeRecordTTL = time.Hour

// codeBucketSpan is the stretch of time one bucket covers, and
// codeBucketLayout names a bucket by its start (UTC).
const (
	codeBucketSpan   = time.Hour
	codeBucketLayout = "2006010215"
)

type codeRecord struct {
	SentAt time.Time `json:"sent_at"`
}

// codeHash is how a code is named in storage: never the code itself.
func codeHash(code string) string {
	sum := sha256.Sum256([]byte(code))
	return hex.EncodeToString(sum[:])
}

// codeBucket names the bucket holding records sent at t.
func codeBucket(t time.Time) string {
	return t.UTC().Format(codeBucketLayout)
}

// codeKey is where a record of a code (by hash) sent in bucket is kept.
func codeKey(bucket, hash string) string {
	return codeStoragePrefix + bucket + "/" + hash
}

// legacyCodeKey is where the previous release kept a code's record.
func legacyCodeKey(hash string) string {
	return codeStoragePrefix + hash
}

// liveCodeKeys lists, newest first, the keys that can hold a record of the
// code hash still live at now: one in each bucket overlapping
// (now − codeRecordTTL, now]. With a TTL of an hour that is the current hour's
// and the previous hour's.
func liveCodeKeys(now time.Time, hash string) []string {
	oldest := now.Add(-codeRecordTTL).UTC().Truncate(codeBucketSpan)
	var keys []string
	for t := now.UTC().Truncate(codeBucketSpan); !t.Before(oldest); t = t.Add(-codeBucketSpan) {
		keys = append(keys, codeKey(codeBucket(t), hash))
	}
	return keys
}

// claimCode records code as sent, or reports that it already was (a live
// record of it exists in a bucket that can still hold one, or at its legacy
// key). The record goes in the bucket of the current hour; releaseCode finds
// it there again.
func (b *backend) claimCode(ctx context.Context, s logical.Storage, code string) (claimed bool, err error) {
	b.codeMu.Lock()
	defer b.codeMu.Unlock()
	now := b.now()
	hash := codeHash(code)
	keys := liveCodeKeys(now, hash)
	for _, key := range append(keys, legacyCodeKey(hash)) {
		prev, err := getJSON[codeRecord](ctx, s, key)
		if err != nil {
			return false, err
		}
		if prev != nil && now.Sub(prev.SentAt) < codeRecordTTL {
			return false, nil
		}
	}
	if err := putJSON(ctx, s, keys[0], codeRecord{SentAt: now}); err != nil {
		return false, err
	}
	return true, nil
}

// releaseCode forgets a code Connect provably did not process, so the caller
// may send it again. The record was written in the bucket of the hour
// claimCode ran in, which (the release coming within codeRecordTTL of the
// claim) is one of the buckets that can still hold a live record, so the code
// is deleted from each of those. Any live record of the code is the one this
// claim wrote: while it lives, every other claim of the code is refused.
func (b *backend) releaseCode(ctx context.Context, s logical.Storage, code string) {
	b.codeMu.Lock()
	defer b.codeMu.Unlock()
	// The request may be over (it left while queued): the record goes anyway.
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for _, key := range liveCodeKeys(b.now(), codeHash(code)) {
		if err := s.Delete(ctx, key); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		b.Logger().Warn("could not release an authorization code that Connect did not process", "error", err)
	}
}

// pruneCodes drops code records past their TTL. It lists codes/ only: a
// bucket whose hour ended at least codeRecordTTL ago holds no live record, so
// it is listed and its keys deleted without reading them; younger buckets are
// left alone. Legacy records (codes/<sha256>) are read and dropped once past
// their TTL. An entry that fails is reported and the others are still pruned.
func (b *backend) pruneCodes(ctx context.Context, s logical.Storage) error {
	entries, err := s.List(ctx, codeStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing code records: %w", err)
	}
	now := b.now()
	var errs []error
	for _, entry := range entries {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		if bucket, ok := strings.CutSuffix(entry, "/"); ok {
			start, err := time.Parse(codeBucketLayout, bucket)
			if err != nil {
				continue // not a bucket this engine wrote: leave it
			}
			if now.Before(start.Add(codeBucketSpan + codeRecordTTL)) {
				continue // may still hold a live record
			}
			if err := dropCodeBucket(ctx, s, codeStoragePrefix+entry); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		key := codeStoragePrefix + entry
		rec, err := getJSON[codeRecord](ctx, s, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec != nil && now.Sub(rec.SentAt) >= codeRecordTTL {
			if err := s.Delete(ctx, key); err != nil {
				errs = append(errs, storageError("deleting code record", err))
			}
		}
	}
	return errors.Join(errs...)
}

// dropCodeBucket deletes every record of a bucket (prefix ends in "/")
// without reading any.
func dropCodeBucket(ctx context.Context, s logical.Storage, prefix string) error {
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("listing code records: %w", err)
	}
	for _, k := range keys {
		if strings.HasSuffix(k, "/") {
			continue // not a record this engine wrote
		}
		if err := s.Delete(ctx, prefix+k); err != nil {
			return storageError("deleting code record", err)
		}
	}
	return nil
}
