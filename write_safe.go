package instacart

import (
	"github.com/hashicorp/vault/sdk/helper/consts"
)

// WriteSafeReplicationState answers what framework.Backend's method answers,
// with one call to Vault where that makes two. Every cold read asks it before
// minting, and for an external plugin each SystemView method is a gRPC round
// trip to Vault: the SDK asks LocalMount on every call, though its answer
// only matters on a performance secondary. The state itself is asked every
// time, never cached: Vault can change it under a live backend (a standby
// promoted, a secondary demoted), and the next mint must see that.
func (b *backend) WriteSafeReplicationState() bool {
	_, ok := b.writeSafe()
	return ok
}

// writeSafe is WriteSafeReplicationState with the state it read.
func (b *backend) writeSafe() (consts.ReplicationState, bool) {
	sys := b.System()
	state := sys.ReplicationState()
	switch {
	case state.HasState(consts.ReplicationDRSecondary | consts.ReplicationPerformanceStandby):
		return state, false
	case state.HasState(consts.ReplicationPerformanceSecondary):
		// A local mount is not replicated: the secondary writes it itself.
		return state, sys.LocalMount()
	}
	return state, true
}
