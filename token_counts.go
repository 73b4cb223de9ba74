package instacart

import (
	"path"
	"strings"
	"sync"
)

// tokenCounts counts tokens per role as this node adds and removes them, so
// no gauge lists a role's tokens (a million shoppers' keys are ~75 MB): the
// tokens stored (counted anew by every tidy pass, from the units it walks)
// and those queued for revocation (counted anew by every retry pass). A pass
// corrects what another node wrote.
//
// While a pass counts a role, a change to a unit it has already listed is
// added to what it listed, and a change to a unit still to come is left to
// that unit's listing: each token is counted once (give or take one racing
// the very list call of its unit).
type tokenCounts struct {
	mu    sync.Mutex
	roles map[string]*roleCount
	// baseline is set once a pass has counted every role whole: from then
	// on a role missing from the counts has none.
	baseline bool
}

type roleCount struct {
	n int64
	// During a count: the units listed so far, what they listed, and the
	// changes made to them since.
	counting bool
	listed   map[tokenUnit]bool
	seen     int64
	moved    int64
}

func newTokenCounts() *tokenCounts { return &tokenCounts{roles: map[string]*roleCount{}} }

func (c *tokenCounts) role(name string) *roleCount {
	rc := c.roles[name]
	if rc == nil {
		rc = &roleCount{}
		c.roles[name] = rc
	}
	return rc
}

// add counts d more tokens of role in unit.
func (c *tokenCounts) add(role string, unit tokenUnit, d int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	rc.n += d
	if rc.counting && rc.listed[unit] {
		rc.moved += d
	}
}

// addKey counts d more tokens at a stored token key.
func (c *tokenCounts) addKey(key string, d int64) {
	c.add(tokenRole(key), keyUnit(key), d)
}

// legacyUnit holds the previous release's per-user keys for counting: a
// pass moves each to its shard, where it is counted, so counts never list
// them, and a move's removal and store cancel out.
const legacyUnit tokenUnit = "v0.1.0"

// keyUnit is the unit a stored token key counts in.
func keyUnit(key string) tokenUnit {
	if rest, ok := strings.CutPrefix(key, userTokenStoragePrefix); ok {
		return path.Base(path.Dir(rest))
	}
	if _, legacy := migratedKey(key); legacy {
		return legacyUnit
	}
	return ""
}

// countable is how many of keys a count lists: all but the previous
// release's.
func countable(keys []string) int {
	n := 0
	for _, k := range keys {
		if keyUnit(k) != legacyUnit {
			n++
		}
	}
	return n
}

// startCount begins counting role from storage.
func (c *tokenCounts) startCount(role string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	rc.counting, rc.listed, rc.seen, rc.moved = true, map[tokenUnit]bool{}, 0, 0
}

// listedUnit records that the count of role listed n tokens in unit.
func (c *tokenCounts) listedUnit(role string, unit tokenUnit, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	if rc.counting {
		rc.listed[unit] = true
		rc.seen += int64(n)
	}
}

// finishCount sets role's count to what its units listed plus what changed
// in them since.
func (c *tokenCounts) finishCount(role string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	if rc.counting {
		rc.n, rc.counting, rc.listed = max(rc.seen+rc.moved, 0), false, nil
	}
}

// finishPass records that a pass has counted every role whole: roles it
// found nothing for keep only what was added since.
func (c *tokenCounts) finishPass(counted map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.baseline = true
	for name, rc := range c.roles {
		if !counted[name] && rc.n <= 0 && !rc.counting {
			delete(c.roles, name)
		}
	}
}

// get is role's count, and whether it is known (not before the first pass
// has counted storage).
func (c *tokenCounts) get(role string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.roles[role]
	if rc == nil {
		return 0, c.baseline
	}
	return max(rc.n, 0), c.baseline
}
