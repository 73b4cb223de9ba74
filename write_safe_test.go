package instacart

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// countingSystemView counts the SystemView calls that are gRPC round trips
// to Vault for an external plugin.
type countingSystemView struct {
	logical.SystemView
	replication, local atomic.Int64
}

func (c *countingSystemView) ReplicationState() consts.ReplicationState {
	c.replication.Add(1)
	return c.SystemView.ReplicationState()
}

func (c *countingSystemView) LocalMount() bool {
	c.local.Add(1)
	return c.SystemView.LocalMount()
}

// countSystemCalls has e's backend ask Vault through a counting view of
// e.sys (whose fields the test may still change).
func countSystemCalls(e *testEnv) *countingSystemView {
	c := &countingSystemView{SystemView: e.sys}
	if err := e.b.Setup(context.Background(), &logical.BackendConfig{Logger: e.b.Logger(), System: c}); err != nil {
		e.t.Fatalf("Setup: %v", err)
	}
	return c
}

// The engine's answer is the SDK's in every replication state, for local and
// replicated mounts alike.
func TestWriteSafeMatchesTheSDK(t *testing.T) {
	states := []consts.ReplicationState{
		consts.ReplicationUnknown,
		consts.ReplicationPerformancePrimary,
		consts.ReplicationPerformanceSecondary,
		consts.ReplicationDRPrimary,
		consts.ReplicationDRSecondary,
		consts.ReplicationPerformanceStandby,
		consts.ReplicationPerformancePrimary | consts.ReplicationDRPrimary,
		consts.ReplicationPerformanceSecondary | consts.ReplicationDRPrimary,
		consts.ReplicationPerformanceSecondary | consts.ReplicationPerformanceStandby,
		consts.ReplicationDRSecondary | consts.ReplicationPerformancePrimary,
	}
	for _, state := range states {
		for _, local := range []bool{false, true} {
			sys := &logical.StaticSystemView{ReplicationStateVal: state, LocalMountVal: local}
			sdk := &framework.Backend{}
			ours := newBackend()
			if err := sdk.Setup(context.Background(), &logical.BackendConfig{System: sys}); err != nil {
				t.Fatal(err)
			}
			if err := ours.Setup(context.Background(), &logical.BackendConfig{System: sys}); err != nil {
				t.Fatal(err)
			}
			if got, want := ours.WriteSafeReplicationState(), sdk.WriteSafeReplicationState(); got != want {
				t.Errorf("state %s, local %v: write-safe %v, the SDK says %v", state.StateStrings(), local, got, want)
			}
		}
	}
}

// A cold read on a node that is neither a secondary nor a standby asks Vault
// nothing more than a cached read does: the framework asks the replication
// state once for every request, and the check before the mint takes that
// answer; it never asks whether the mount is local. The state is asked
// anew for every request, so a change under the live backend reaches the
// very next mint.
func TestWriteSafeNoCallOfItsOwn(t *testing.T) {
	for _, view := range []bool{true, false} {
		t.Run(fmt.Sprintf("view %v", view), func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			if !view {
				e.b.tokens.view.drop() // the storage read, then the check
			}
			checkWriteSafeNoCallOfItsOwn(t, e)
		})
	}
}

func checkWriteSafeNoCallOfItsOwn(t *testing.T, e *testEnv) {
	calls := countSystemCalls(e)
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
	cold := calls.replication.Swap(0)
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
	cached := calls.replication.Swap(0)
	if cold != cached || calls.local.Load() != 0 {
		t.Errorf("a cold read asked ReplicationState %d times (a cached read %d) and LocalMount %d times: want as many as the cached read, and none",
			cold, cached, calls.local.Load())
	}
	if e.fake.Mints() != 1 {
		t.Fatalf("mints = %d, want 1", e.fake.Mints())
	}

	e.sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
	if _, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}); err != logical.ErrReadOnly {
		t.Errorf("cold read after becoming a standby: err = %v, want logical.ErrReadOnly", err)
	}
	e.sys.ReplicationStateVal = consts.ReplicationPerformanceSecondary
	if _, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-3"}); err != logical.ErrReadOnly {
		t.Errorf("cold read on a performance secondary: err = %v, want logical.ErrReadOnly", err)
	}
	if calls.local.Load() == 0 {
		t.Error("LocalMount was not asked on a performance secondary")
	}
	e.sys.LocalMountVal = true // a local mount on a secondary is its own to write
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-4"})
	e.sys.ReplicationStateVal, e.sys.LocalMountVal = consts.ReplicationPerformancePrimary, false
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-5"})
	if e.fake.Mints() != 3 {
		t.Errorf("mints = %d, want 3: one per write-safe cold read, none on the standby or secondary", e.fake.Mints())
	}
}

// blockingStateView answers ReplicationState with the state as it was when
// asked, holding the answer of a call while hold is set until release.
type blockingStateView struct {
	logical.SystemView
	state            atomic.Uint32
	hold             atomic.Bool
	reached, release chan struct{}
}

func (v *blockingStateView) ReplicationState() consts.ReplicationState {
	state := consts.ReplicationState(v.state.Load())
	if v.hold.CompareAndSwap(true, false) {
		close(v.reached)
		<-v.release
	}
	return state
}

// An answer that comes late, to a call begun before the request, is older
// than the request: it is neither taken for the request's own nor allowed to
// replace a fresher one.
func TestStateViewKeepsTheFreshestAnswer(t *testing.T) {
	inner := &blockingStateView{SystemView: logical.TestSystemView(), reached: make(chan struct{}), release: make(chan struct{})}
	v := &stateView{SystemView: inner}
	inner.hold.Store(true)
	late := make(chan consts.ReplicationState)
	go func() { late <- v.ReplicationState() }() // asked while the node was active
	<-inner.reached

	inner.state.Store(uint32(consts.ReplicationPerformanceStandby)) // demoted
	mark := v.mark()                                                // a request begins
	if _, fresh := v.since(mark); fresh {
		t.Fatal("an answer to a call begun before the request passes for fresh")
	}
	if got := v.ReplicationState(); got != consts.ReplicationPerformanceStandby {
		t.Fatalf("state %s", got.StateStrings())
	}
	close(inner.release)
	if got := <-late; got != consts.ReplicationUnknown {
		t.Fatalf("the held call answered %s", got.StateStrings())
	}
	state, fresh := v.since(mark)
	if !fresh || state != consts.ReplicationPerformanceStandby {
		t.Errorf("after the late answer: state %v (fresh %v), want the standby state the request's own call got", state.StateStrings(), fresh)
	}
}
