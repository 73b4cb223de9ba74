package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// Where shared tokens are stored. A role-wide token, and the role-wide tokens
// it superseded, sit in the role's folder:
//
//	tokens/<role>/role
//	tokens/<role>/old-<token hash>
//
// Per-user tokens, up to one per shopper, are spread over shards by the hash
// of the user id, so that no pass over them ever lists more than a shard:
//
//	users/<role>/<first two hex digits>/<sha256 of the user id, hex>
//	users/<role>/<first two hex digits>/old-<token hash>
//
// The previous release (v0.1.0) kept per-user tokens in the role's folder, as
// tokens/<role>/user-<sha256 of the user id>; they are still found (a read
// moves its own), and tidy moves the rest in the background.
const (
	tokenStoragePrefix     = "tokens/"
	userTokenStoragePrefix = "users/"
	legacyUserPrefix       = "user-"
	supersededPrefix       = "old-"
	// shardDigits is how many hex digits of the user hash name a shard: 256
	// shards, so a shard of a million users' tokens lists ~4,000 keys.
	shardDigits = 2
)

func roleTokenPrefix(role string) string { return tokenStoragePrefix + role + "/" }
func userTokenPrefix(role string) string { return userTokenStoragePrefix + role + "/" }

func userHash(userID string) string {
	sum := sha256.Sum256([]byte(userID))
	return hex.EncodeToString(sum[:])
}

// userKey is where the token of the user whose id hashes to h lives.
func userKey(role, h string) string {
	return userTokenPrefix(role) + h[:shardDigits] + "/" + h
}

// tokenKey is where the shared token of role (and of userID, for a per-user
// token) lives.
func tokenKey(role, userID string) string {
	if userID == "" {
		return roleTokenPrefix(role) + "role"
	}
	return userKey(role, userHash(userID))
}

// legacyUserKey is where the previous release kept userID's token.
func legacyUserKey(role, userID string) string {
	return roleTokenPrefix(role) + legacyUserPrefix + userHash(userID)
}

// migratedKey is where a previous release's per-user key (legacyUserKey)
// moves to; ok is false for any other key.
func migratedKey(key string) (string, bool) {
	dir, base := path.Split(key)
	role, isRoleDir := strings.CutPrefix(strings.TrimSuffix(dir, "/"), tokenStoragePrefix)
	h, isUser := strings.CutPrefix(base, legacyUserPrefix)
	if !isRoleDir || !isUser || len(h) != sha256.Size*2 {
		return "", false
	}
	return userKey(role, h), true
}

// supersededKey is where a shared token replaced while still valid is kept,
// out of service, until it expires or a flush revokes it (its leases still
// hold it): beside the key it was live at.
func supersededKey(liveKey, token string) string {
	dir, _ := path.Split(liveKey)
	return dir + supersededPrefix + tokenHash(token)
}

// tokenHash names a token without giving it away: the hex of the first 16
// bytes of its sha256. Leases of shared tokens carry it, so a renewal can
// tell whether the lease's token is still the one its role serves.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:16])
}

// tokenRole names the role a stored token key belongs to ("" for none).
func tokenRole(key string) string {
	for _, prefix := range []string{tokenStoragePrefix, userTokenStoragePrefix} {
		if rest, ok := strings.CutPrefix(key, prefix); ok {
			role, _, _ := strings.Cut(rest, "/")
			return role
		}
	}
	return ""
}

// tokenRoles lists the roles that have tokens stored, deleted roles
// included, in order. It lists role names only, never tokens (Vault's
// storage walks the keys to answer, but sends only the names).
func tokenRoles(ctx context.Context, s logical.Storage) ([]string, error) {
	seen := map[string]bool{}
	for _, prefix := range []string{tokenStoragePrefix, userTokenStoragePrefix} {
		dirs, err := s.List(ctx, prefix)
		if err != nil {
			return nil, fmt.Errorf("listing roles with stored tokens: %w", err)
		}
		for _, d := range dirs {
			if role, ok := strings.CutSuffix(d, "/"); ok {
				seen[role] = true
			}
		}
	}
	roles := make([]string, 0, len(seen))
	for r := range seen {
		roles = append(roles, r)
	}
	slices.Sort(roles)
	return roles, nil
}

// tokenUnit is a set of a role's token keys listed in one call: the role's
// folder (unit "", with the role-wide token), or one shard of its users.
type tokenUnit = string

// roleShards lists the shards holding a role's per-user tokens, in order.
func roleShards(ctx context.Context, s logical.Storage, role string) ([]tokenUnit, error) {
	dirs, err := s.List(ctx, userTokenPrefix(role))
	if err != nil {
		return nil, fmt.Errorf("listing the token shards of role %q: %w", role, err)
	}
	var shards []tokenUnit
	for _, d := range dirs {
		if sh, ok := strings.CutSuffix(d, "/"); ok {
			shards = append(shards, sh)
		}
	}
	slices.Sort(shards)
	return shards, nil
}

// unitKeys lists the token keys of one unit of a role.
func unitKeys(ctx context.Context, s logical.Storage, role string, unit tokenUnit) ([]string, error) {
	prefix := roleTokenPrefix(role)
	if unit != "" {
		prefix = userTokenPrefix(role) + unit + "/"
	}
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing stored tokens under %s: %w", prefix, err)
	}
	out := keys[:0]
	for _, k := range keys {
		if !strings.HasSuffix(k, "/") {
			out = append(out, prefix+k)
		}
	}
	return out, nil
}

// walkRoleTokens calls fn with the keys of each unit of a role's tokens that
// include accepts (nil: all), in turn, so no more than one shard's keys are
// held at once. The role's folder comes first, and the shards are listed
// after it: a token a read moves out of the folder meanwhile lands in a
// shard still to come.
func walkRoleTokens(ctx context.Context, s logical.Storage, role string, include func(tokenUnit) bool, fn func(unit tokenUnit, keys []string) error) error {
	visit := func(u tokenUnit) error {
		if include != nil && !include(u) {
			return nil
		}
		keys, err := unitKeys(ctx, s, role, u)
		if err != nil {
			return err
		}
		return fn(u, keys)
	}
	if err := visit(""); err != nil {
		return err
	}
	shards, err := roleShards(ctx, s, role)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		if err := visit(sh); err != nil {
			return err
		}
	}
	return nil
}
