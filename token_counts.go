package instacart

import "sync"

// tokenCounts counts tokens per role as this node adds and removes them, so
// no gauge lists a role's tokens (a million shoppers' keys are ~75 MB): the
// tokens stored (counted anew by every tidy pass, from the shards it walks)
// and those queued for revocation (counted anew by every retry pass). A pass
// corrects what another node wrote, give or take the writes made while it
// counted the role.
type tokenCounts struct {
	mu    sync.Mutex
	roles map[string]*roleCount
	// baseline is set once a whole pass has counted storage: from then on a
	// role missing from the counts has none.
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

// add counts d more tokens of role.
func (c *tokenCounts) add(role string, d int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
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

// finishCount sets role's count to the tokens a pass counted, plus
// what this node stored or removed since the count began.
func (c *tokenCounts) finishCount(role string, counted int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.role(role)
	rc.n, rc.counting = max(counted+rc.moved, 0), false
}

// finishPass records that a whole pass has counted storage: roles it found
// nothing for keep only what was added since.
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
