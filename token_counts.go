package instacart

import "sync"

// tokenCounts counts the tokens each role has stored, as this node stores
// and removes them, so the instacart_shared_tokens gauge never lists a
// role's tokens (a million shoppers' keys are ~75 MB). Each tidy pass counts
// every role anew from the shards it walks: that corrects what another node
// wrote, give or take the writes made while a role was being counted.
type tokenCounts struct {
	mu    sync.Mutex
	roles map[string]*roleCount
	// baseline is set once a whole tidy pass has counted storage: from then
	// on a role missing from the counts has no tokens stored.
	baseline bool
}

type roleCount struct {
	n int64
	// counting is set while a tidy pass counts the role; moved gathers what
	// this node stored and removed meanwhile.
	counting bool
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

// add counts d more tokens stored under key's role.
func (c *tokenCounts) add(key string, d int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(tokenRole(key))
	rc.n += d
	if rc.counting {
		rc.moved += d
	}
}

// startCount marks the start of counting role from storage.
func (c *tokenCounts) startCount(role string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	rc.counting, rc.moved = true, 0
}

// finishCount sets role's count to the stored tokens a pass counted, plus
// what this node stored or removed since the count began.
func (c *tokenCounts) finishCount(role string, counted int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	rc.n, rc.counting = max(counted+rc.moved, 0), false
}

// finishPass records that a whole pass has counted storage: roles it found
// nothing stored for keep only what was stored since.
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

// get is role's count, and whether it is known (not before the first tidy
// pass has counted storage).
func (c *tokenCounts) get(role string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.roles[role]
	if rc == nil {
		return 0, c.baseline
	}
	return max(rc.n, 0), c.baseline
}
