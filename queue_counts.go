package instacart

import (
	"strings"
	"sync"
)

// queueCounts counts each role's queued revocations exactly, a unit (shard,
// or "" for the previous release's flat keys) at a time: a unit's count is
// set by a listing of it that no change overlapped, and moved by every change
// made since. Every change to the queue goes between beginChange and
// endChange, under the entry's claim, so a listing can tell whether it may
// have missed one. A role's count is known once every unit its folder named
// has been counted since the process started.
type queueCounts struct {
	mu    sync.Mutex
	roles map[string]*queueCount
	// empty is set when storage held no queue at all at start: a role
	// missing from roles then has none.
	empty bool
}

type queueCount struct {
	units  map[tokenUnit]*unitCount
	folder map[tokenUnit]bool // the units the last listing of the role's folder named; nil before one
}

type unitCount struct {
	n        int64
	counted  bool   // n started from a listing, not only from changes
	changing int    // changes under way
	version  uint64 // bumped as each change begins and ends
}

func newQueueCounts() *queueCounts { return &queueCounts{roles: map[string]*queueCount{}} }

func (c *queueCounts) unit(role string, unit tokenUnit) *unitCount {
	q := c.roles[role]
	if q == nil {
		q = &queueCount{units: map[tokenUnit]*unitCount{}}
		c.roles[role] = q
	}
	u := q.units[unit]
	if u == nil {
		u = &unitCount{}
		q.units[unit] = u
	}
	return u
}

// beginChange records that a change to unit is under way.
func (c *queueCounts) beginChange(role string, unit tokenUnit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.unit(role, unit)
	u.changing++
	u.version++
}

// endChange ends it, counting d more entries if it applied.
func (c *queueCounts) endChange(role string, unit tokenUnit, d int64, applied bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.unit(role, unit)
	u.changing--
	u.version++
	if applied {
		u.n += d
	}
}

// version is taken before listing unit, for listed.
func (c *queueCounts) version(role string, unit tokenUnit) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unit(role, unit).version
}

// listed records that a listing of unit begun at version v found n entries:
// it counts the unit unless a change overlapped it.
func (c *queueCounts) listed(role string, unit tokenUnit, n int, v uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.unit(role, unit)
	if u.version == v && u.changing == 0 {
		u.n, u.counted = int64(n), true
	}
}

// versions are the versions of role's units known so far, taken before
// listing its folder, for listedFolder.
func (c *queueCounts) versions(role string) map[tokenUnit]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[tokenUnit]uint64{}
	if q := c.roles[role]; q != nil {
		for name, u := range q.units {
			out[name] = u.version
		}
	}
	return out
}

// listedFolder records the units a listing of role's folder named, begun
// with its units at versions before: a unit it did not name holds nothing
// (storage drops an empty folder), unless a change overlapped the listing.
func (c *queueCounts) listedFolder(role string, units []tokenUnit, before map[tokenUnit]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unit(role, "") // the role is known to have a folder
	q := c.roles[role]
	q.folder = make(map[tokenUnit]bool, len(units))
	for _, u := range units {
		q.folder[u] = true
	}
	for name, u := range q.units {
		if v, seen := before[name]; seen && !q.folder[name] && name != "" && u.version == v && u.changing == 0 {
			u.n, u.counted = 0, true
		}
	}
}

// allVersions is versions for every role, taken before listing the queues,
// for listedQueues.
func (c *queueCounts) allVersions() map[string]map[tokenUnit]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[tokenUnit]uint64{}
	for role, q := range c.roles {
		out[role] = map[tokenUnit]uint64{}
		for name, u := range q.units {
			out[role][name] = u.version
		}
	}
	return out
}

// listedQueues records a listing of every role's queue folder (dirs, as
// storage lists revoking/), begun with the units at versions before: a
// role it did not name holds nothing, unless a change overlapped.
func (c *queueCounts) listedQueues(dirs []string, before map[string]map[tokenUnit]uint64) {
	named := map[string]bool{}
	for _, d := range dirs {
		named[strings.TrimSuffix(d, "/")] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for role, q := range c.roles {
		if named[role] {
			continue
		}
		for name, u := range q.units {
			if v, seen := before[role][name]; seen && u.version == v && u.changing == 0 {
				u.n, u.counted = 0, true
			}
		}
	}
}

// markEmpty records that storage holds no queue at all.
func (c *queueCounts) markEmpty() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.empty = true
}

// get is role's count, and whether it is known: every entry since start
// came through changes (storage held no queue), or every unit the role's
// folder named has been counted by a listing (a unit created since starts
// from the changes this process made).
func (c *queueCounts) get(role string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.roles[role]
	if q == nil {
		return 0, c.empty
	}
	var n int64
	for _, u := range q.units {
		n += u.n
	}
	known := c.empty || q.folder != nil
	for name := range q.folder {
		if u := q.units[name]; u == nil || !u.counted {
			known = c.empty
		}
	}
	return max(n, 0), known
}
