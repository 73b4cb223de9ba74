package instacart

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// tidyInterval is how often the periodic function tidies on its own: a pass
// reads every stored shared token, so it runs hourly, not every minute.
const tidyInterval = time.Hour

// tidyBatch is how many keys a pass checks at once, sent together. On raft
// each delete is a log write, and raft commits the writes waiting at the
// time together (up to 64 a commit by default): one key at a time, a
// million expired tokens took half an hour. On single-node raft with 2
// cores, idle, 64 at once tidied 3,400-3,900 keys/s, 128 at once 4,500;
// the Vault and plugin processes then used half the cores, so the rest was
// waiting on commits.
const tidyBatch = 128

// tidyCursorPath records the last unit (a role's folder or one shard of its
// users) a pass finished, so a pass cut short (a restart, a failover, a
// storage error) is resumed there by the next.
const tidyCursorPath = "tidy/cursor"

type tidyCursor struct {
	Role string    `json:"role"`
	Unit tokenUnit `json:"unit"`
}

// tidyStop is one role's turn in a pass: its units after the cursor's (from),
// those up to it (upTo), or all.
type tidyStop struct {
	role       string
	from, upTo *tokenUnit
}

func (t tidyStop) includes(u tokenUnit) bool {
	switch {
	case t.from != nil:
		return u > *t.from
	case t.upTo != nil:
		return u <= *t.upTo
	}
	return true
}

// tidyPlan orders a pass: the roles after the cursor, then those before it,
// with the cursor's own role split across both ends.
func tidyPlan(roles []string, cur *tidyCursor) []tidyStop {
	if cur == nil {
		plan := make([]tidyStop, len(roles))
		for i, r := range roles {
			plan[i] = tidyStop{role: r}
		}
		return plan
	}
	var after, before []tidyStop
	for _, r := range roles {
		switch {
		case r == cur.Role:
			after = append(after, tidyStop{role: r, from: &cur.Unit})
			before = append(before, tidyStop{role: r, upTo: &cur.Unit})
		case r > cur.Role:
			after = append(after, tidyStop{role: r})
		default:
			before = append(before, tidyStop{role: r})
		}
	}
	return append(after, before...)
}

// tidy walks every role's stored tokens unit by unit, from where the last
// pass stopped: it removes expired ones, moves the previous release's
// per-user tokens to their shards, and counts what stays. Then it drops
// retired credentials past their retention.
func (b *backend) tidy(ctx context.Context, s logical.Storage, p *tidyPass) error {
	if err := p.pace.load(ctx, s); err != nil {
		return err
	}
	cur, err := getJSON[tidyCursor](ctx, s, tidyCursorPath)
	if err != nil {
		return err
	}
	if cur != nil {
		from := cur.Role + "/" + cur.Unit
		p.resumedFrom.Store(&from)
	}
	roles, err := tokenRoles(ctx, s)
	if err != nil {
		return err
	}
	plan := tidyPlan(roles, cur)
	// A role is counted from its first stop to its last: the cursor's role
	// is visited at both ends of a resumed pass.
	stops := map[string]int{}
	for _, stop := range plan {
		stops[stop.role]++
	}
	counted := map[string]bool{}
	for _, stop := range plan {
		if !counted[stop.role] {
			counted[stop.role] = true
			b.counts.startCount(stop.role)
		}
		if err := b.tidyRole(ctx, s, stop, p); err != nil {
			return err
		}
		if stops[stop.role]--; stops[stop.role] == 0 {
			b.counts.finishCount(stop.role)
		}
	}
	if err := s.Delete(ctx, tidyCursorPath); err != nil {
		return storageError("deleting the tidy cursor", err)
	}
	if err := p.pace.save(ctx, s); err != nil {
		// The pass is done; the next one saves the baseline again.
		b.Logger().Warn("tidy could not store its baseline latency", "error", err)
	}
	b.counts.finishPass(counted)
	// Every key of the previous release's layout was moved or removed.
	b.legacyUserKeys.Store(false)
	b.tokens.forgetExpired(b.now())
	retired, err := b.pruneConfig(ctx, s)
	p.counts.add(tidyRetired, retired)
	return err
}

// tidyRole tidies the units of one role that stop includes, counting them
// and saving the cursor after each.
func (b *backend) tidyRole(ctx context.Context, s logical.Storage, stop tidyStop, p *tidyPass) error {
	return walkRoleTokens(ctx, s, stop.role, stop.includes, func(u tokenUnit, keys []string) error {
		b.counts.listedUnit(stop.role, u, countable(keys))
		pos := stop.role + "/" + u
		p.position.Store(&pos)
		if err := b.tidyKeys(ctx, s, stop.role, keys, p); err != nil {
			return err
		}
		return putJSON(ctx, s, tidyCursorPath, tidyCursor{Role: stop.role, Unit: u})
	})
}

// tidyKeys checks keys a batch at a time, at the pace storage's latency
// allows (tidy_pace.go): a token of the previous layout is moved, a stale
// one removed.
func (b *backend) tidyKeys(ctx context.Context, s logical.Storage, role string, keys []string, p *tidyPass) error {
	for len(keys) > 0 {
		batch := keys[:min(tidyBatch, len(keys))]
		keys = keys[len(batch):]
		if err := p.pace.wait(ctx, len(batch)); err != nil {
			return err
		}
		start := p.pace.now()
		wrote := p.counts.written() // one batch at a time
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		for i, key := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = b.tidyKey(ctx, s, role, key, p)
			}()
		}
		wg.Wait()
		p.pace.observe(len(batch), p.counts.written()-wrote, p.pace.now().Sub(start))
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// tidyKey tidies one key. An entry that cannot be decoded is skipped (and
// logged): failing the pass would leave its cursor before it, and every
// later pass would stop there too.
func (b *backend) tidyKey(ctx context.Context, s logical.Storage, role, key string, p *tidyPass) error {
	err := b.tidyOne(ctx, s, role, key, p)
	if errors.Is(err, errCorrupt) {
		p.counts.add(tidySkipped, 1)
		b.Logger().Warn("tidy skipped a stored token it cannot decode", "role", role, "error", err)
		return nil
	}
	return err
}

func (b *backend) tidyOne(ctx context.Context, s logical.Storage, role, key string, p *tidyPass) error {
	p.counts.add(tidyChecked, 1)
	if _, ok := migratedKey(key); ok {
		_, outcome, err := b.moveLegacyToken(ctx, s, role, key)
		switch outcome {
		case legacyMoved:
			p.counts.add(tidyMoved, 1)
		case legacyExpired:
			p.counts.add(tidyExpired, 1)
		}
		return err
	}
	// One read per key, under the locks: a read without them first would
	// cost an expired token two (each a call to Vault).
	expired, orphaned, err := b.removeIfStale(ctx, s, role, key)
	if expired {
		p.counts.add(tidyExpired, 1)
	}
	if orphaned {
		p.counts.add(tidyOrphaned, 1)
	}
	return err
}

// staleness says whether a stored token should go: only once it has
// expired, since until then the leases holding it may need it revoked (a
// flush). orphaned: its role (r, nil when deleted) no longer served it.
func staleness(t *issuedToken, r *role, now time.Time) (expired, orphaned bool) {
	switch {
	case t == nil || !t.expired(now):
		return false, false
	case r == nil || t.RoleHash != r.hash:
		return false, true
	}
	return true, false
}

// removeIfStale deletes key if its token is stale, checked again under the
// role lock and the key's publish lock, which publishShared also takes: a
// token stored there meanwhile is never dropped.
func (b *backend) removeIfStale(ctx context.Context, s logical.Storage, role, key string) (expired, orphaned bool, err error) {
	mu := b.roleLock(role)
	mu.RLock()
	defer mu.RUnlock()
	unlock := b.tokens.lockKey(key)
	defer unlock()
	r, err := b.getRoleLocked(ctx, s, role)
	if err != nil {
		return false, false, err
	}
	t, err := b.tokens.load(ctx, s, key)
	if err != nil {
		return false, false, err
	}
	expired, orphaned = staleness(t, r, b.now())
	if !expired && !orphaned {
		return false, false, nil
	}
	b.tokens.forget(key)
	if err := s.Delete(ctx, key); err != nil {
		return false, false, storageError("deleting cached token", err)
	}
	b.counts.addKey(key, -1)
	return expired, orphaned, nil
}

// forgetRoleTokens is called after a role is deleted or redefined: its
// tokens leave memory at once. In storage they stay, out of service (their
// role no longer serves them), until they expire and tidy removes them, or a
// flush of the role revokes them: leases may still hold them.
func (b *backend) forgetRoleTokens(role string) {
	for _, k := range b.tokens.memoryKeys(role) {
		b.tokens.forget(k)
	}
}
