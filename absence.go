package instacart

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// A new shopper's first read would ask storage whether a token is stored for
// them; almost always none is, and that read is a round trip to Vault the
// mint itself does not need. keyView answers it from memory when memory
// holds the proof, and otherwise says nothing.
//
// The proof is a complete view of the mount's token keys, held by the
// process that is their only writer:
//   - initialize, on a node that may write, listed the mount's token folders
//     and found none (so no token, at today's keys or the previous release's,
//     and no tidy pass under way), and no invalidation came meanwhile;
//   - since the process started, every token it stored was noted before its
//     storage write (tokenCache.store), so a key written after the listing
//     is in the filter;
//   - no other process wrote since: only the active node writes a mount's
//     storage (standbys forward writes to it), and a process that becomes
//     that node (after a failover, a standby's promotion, a restart, a
//     snapshot restore) mounts the engine anew, with no view. Where another
//     node's writes do reach this process (it is a performance standby or
//     secondary), Vault tells of each through invalidate, which drops the
//     view; so does a replication state other than the one it was built
//     under, seen by any mint. Writes through sys/raw bypass the engine, as
//     they bypass every copy it keeps in memory.
//
// Deletes (tidy, flushes, a role's clean-up) leave noted keys noted: a key
// noted but gone costs a storage read, as before. The filter is a Bloom
// filter: it may call a key noted that never was (a read, as before), never
// the reverse. A mount that held tokens when it started has no view: each
// user's first read asks storage, as before.
type keyView struct {
	mu       sync.Mutex // orders building the view against dropping it
	drops    uint64     // views dropped, guarded by mu
	complete atomic.Bool
	state    atomic.Uint32 // the consts.ReplicationState the view was built under
	seed     maphash.Seed
	bits     []atomic.Uint64
}

// keyViewBits is the filter's size: 2^23 bits, 1 MiB, allocated once per
// mount and touched only as keys are noted. With keyViewHashes hashes a key
// never noted passes for noted about once in 200,000 reads after 100,000
// tokens, once in 50 after a million.
const (
	keyViewBits   = 1 << 23
	keyViewHashes = 4
)

func newKeyView() *keyView {
	return &keyView{seed: maphash.MakeSeed(), bits: make([]atomic.Uint64, keyViewBits/64)}
}

// positions are key's bits in the filter (double hashing).
func (v *keyView) positions(key string) [keyViewHashes]uint32 {
	h := maphash.String(v.seed, key)
	h1, h2 := uint32(h), uint32(h>>32)|1
	var ps [keyViewHashes]uint32
	for i := range ps {
		ps[i] = (h1 + uint32(i)*h2) % keyViewBits
	}
	return ps
}

// note records that key may be stored from now on. It runs before the
// storage write, so no check after the write can miss it.
func (v *keyView) note(key string) {
	for _, p := range v.positions(key) {
		v.bits[p/64].Or(1 << (p % 64))
	}
}

// noted reports whether key may have been noted.
func (v *keyView) noted(key string) bool {
	for _, p := range v.positions(key) {
		if v.bits[p/64].Load()&(1<<(p%64)) == 0 {
			return false
		}
	}
	return true
}

// provesAbsent reports whether memory proves that storage holds nothing at
// key. The caller still confirms the view with holds before acting on it.
func (v *keyView) provesAbsent(key string) bool {
	return v.complete.Load() && !v.noted(key)
}

// epoch is read before the listing that may build the view.
func (v *keyView) epoch() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.drops
}

// build makes the view complete, under state, unless it was dropped since
// epoch: an invalidation that came while the folders were listed may be of
// a key the listing did not see.
func (v *keyView) build(epoch uint64, state consts.ReplicationState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.drops == epoch {
		v.state.Store(uint32(state))
		v.complete.Store(true)
	}
}

// drop ends the view for the life of the process.
func (v *keyView) drop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.drops++
	v.complete.Store(false)
}

// holds reports whether the view still stands in the replication state
// just read, dropping it if the state is not the one it was built under.
func (v *keyView) holds(state consts.ReplicationState) bool {
	if !v.complete.Load() {
		return false
	}
	if consts.ReplicationState(v.state.Load()) != state {
		v.drop()
		return false
	}
	return true
}

// storedToken is what storage holds for m (loadUserToken), without reading
// it when memory proves nothing is there (keyView). Proving it needs the
// replication state, so it also checks that this node may write, as of
// reqCtx's request: when writeChecked, the node was found write-safe, or err
// is logical.ErrReadOnly.
func (b *backend) storedToken(reqCtx, ctx context.Context, s logical.Storage, m *mintRequest) (t *issuedToken, writeChecked bool, err error) {
	if b.tokens.view.provesAbsent(m.key()) {
		state, ok := b.writeSafe(reqCtx)
		if b.tokens.view.holds(state) {
			if !ok {
				return nil, true, logical.ErrReadOnly
			}
			return nil, true, nil
		}
	}
	t, err = b.loadUserToken(ctx, s, m)
	return t, false, err
}
