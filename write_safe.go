package instacart

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// Before minting, the engine asks whether this node may write (a
// performance standby or secondary cannot store what it mints, so the
// request is better forwarded first). For an external plugin each SystemView
// method is a gRPC round trip to Vault, and the SDK's
// WriteSafeReplicationState makes two: the replication state, and whether
// the mount is local, which only matters on a performance secondary.
//
// The framework already asks Vault for the replication state at the start
// of every request it routes (for paths that forward to the active node).
// The check before a mint takes that answer when it was asked after the
// request began, as fresh as any answer for that request, so a mint costs
// no call of its own. The state is never kept beyond that: Vault can change
// it under a live backend (a standby promoted, a secondary demoted), and the
// next request sees the change. A change after the answer was given is
// caught as before: storage refuses the write, and the token is revoked.

// stateView is the SystemView the backend is set up with: Vault's, noting
// the freshest replication state any call was answered. It has only
// SystemView's methods, as the SDK's gRPC client of Vault's view has (the
// framework looks for no other but an entropy source, which that client
// lacks too).
type stateView struct {
	logical.SystemView

	begun atomic.Uint64 // ReplicationState calls begun
	mu    sync.Mutex
	last  consts.ReplicationState // the answer to the call begun last among those answered
	lastN uint64                  // that call's number (0: none answered)
}

func (v *stateView) ReplicationState() consts.ReplicationState {
	n := v.begun.Add(1)
	state := v.SystemView.ReplicationState()
	v.mu.Lock()
	if n > v.lastN { // an answer to an earlier call that comes late is older
		v.last, v.lastN = state, n
	}
	v.mu.Unlock()
	return state
}

// mark is read when a request begins: answers to calls begun after it are
// as fresh as the request.
func (v *stateView) mark() uint64 { return v.begun.Load() }

// since is the freshest answer, if the call it answered began after mark.
func (v *stateView) since(mark uint64) (consts.ReplicationState, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last, v.lastN > mark
}

// Setup is framework.Backend's, with Vault's SystemView behind a stateView.
func (b *backend) Setup(ctx context.Context, conf *logical.BackendConfig) error {
	c := *conf
	if c.System != nil {
		b.sys = &stateView{SystemView: c.System}
		c.System = b.sys
	}
	return b.Backend.Setup(ctx, &c)
}

// requestMarkKey carries stateView.mark from the start of a request.
type requestMarkKey struct{}

// HandleRequest is framework.Backend's, with the request's start marked
// before the framework asks the replication state.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	if b.sys != nil {
		ctx = context.WithValue(ctx, requestMarkKey{}, b.sys.mark())
	}
	return b.Backend.HandleRequest(ctx, req)
}

// WriteSafeReplicationState answers what framework.Backend's method answers,
// asking Vault anew.
func (b *backend) WriteSafeReplicationState() bool {
	_, ok := b.writeSafe(context.Background())
	return ok
}

// writeSafe reports whether this node may write, and the replication state
// it went by: the answer Vault gave for ctx's request, if one was asked after
// the request began, else a new one. It gives the SDK's answer in every
// state, asking LocalMount only where it matters.
func (b *backend) writeSafe(ctx context.Context) (consts.ReplicationState, bool) {
	sys := b.System()
	var state consts.ReplicationState
	fresh := false
	if mark, ok := ctx.Value(requestMarkKey{}).(uint64); ok && b.sys != nil {
		state, fresh = b.sys.since(mark)
	}
	if !fresh {
		state = sys.ReplicationState()
	}
	switch {
	case state.HasState(consts.ReplicationDRSecondary | consts.ReplicationPerformanceStandby):
		return state, false
	case state.HasState(consts.ReplicationPerformanceSecondary):
		// A local mount is not replicated: the secondary writes it itself.
		return state, sys.LocalMount()
	}
	return state, true
}
