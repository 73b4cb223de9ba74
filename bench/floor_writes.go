package main

// What storage does for one new user: Vault's cumulative telemetry around a
// batch of cold reads, and the keys one cold read adds.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// writeCount is what Vault's cumulative telemetry counted over n new users.
type writeCount struct {
	users int
	delta map[string]float64 // series → difference
}

func (w *writeCount) per(series string) float64 {
	if w == nil || w.users == 0 {
		return 0
	}
	return w.delta[series] / float64(w.users)
}

// Series counted per user: raft log entries applied, raft storage writes
// and deletes (durable), and the barrier's (every storage call, any backend).
const (
	mRaftApply  = "vault_raft_apply"
	mRaftPut    = "vault_raft_storage_put_count"
	mRaftDelete = "vault_raft_storage_delete_count"
	mRaftTxn    = "vault_raft_storage_transaction_count"
	mBarPut     = "vault_barrier_put_count"
	mBarGet     = "vault_barrier_get_count"
	mBarDelete  = "vault_barrier_delete_count"
	mBarList    = "vault_barrier_list_count"
)

var writeSeries = []string{mRaftApply, mRaftPut, mRaftDelete, mRaftTxn, mBarPut, mBarDelete, mBarGet, mBarList}

// countWrites reads n new users through t at 8 clients and counts, with
// Vault's cumulative telemetry, what storage did meanwhile.
func (r *runner) countWrites(ctx context.Context, t target, ids *newUsers, n int) (*writeCount, error) {
	before, err := r.vault.promCounters()
	if err != nil {
		return nil, err
	}
	s := runEach(ctx, 8, time.Hour, n, func(ctx context.Context, _ int) (bool, string) { return r.coldRead(ctx, t, ids) })
	if s.errs > 0 {
		return nil, fmt.Errorf("%s: %d of %d reads failed (first: %s)", t.path, s.errs, n, r.vault.Redact(s.firstErr))
	}
	time.Sleep(r.settle()) // anything the read left to do after answering
	after, err := r.vault.promCounters()
	if err != nil {
		return nil, err
	}
	w := &writeCount{users: n, delta: map[string]float64{}}
	for _, m := range writeSeries {
		w.delta[m] = after[m] - before[m]
	}
	return w, nil
}

// newKeysOfOneRead lists what one cold read of t added to the mount's
// storage and to Vault's lease table (sys/raw: the raft server only).
func (r *runner) newKeysOfOneRead(ctx context.Context, t target, ids *newUsers) ([]string, error) {
	if r.storage != "raft" {
		return nil, nil
	}
	mount := strings.SplitN(t.path, "/", 2)[0]
	uuid, err := r.vault.MountUUID(mount)
	if err != nil {
		return nil, err
	}
	leasePrefix := "sys/expire/id/" + strings.TrimPrefix(t.path, "") + "/"
	list := func() (map[string]bool, error) {
		m := map[string]bool{}
		keys, err := r.vault.rawTree("logical/" + uuid + "/")
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			m[strings.TrimPrefix(k, "logical/"+uuid+"/")] = true
		}
		leases, err := r.vault.RawList(leasePrefix)
		if err != nil {
			return nil, err
		}
		for _, k := range leases {
			m["(Vault) "+leasePrefix+k] = true
		}
		return m, nil
	}
	before, err := list()
	if err != nil {
		return nil, err
	}
	if ok, msg := r.coldRead(ctx, t, ids); !ok {
		return nil, fmt.Errorf("one cold read of %s: %s", t.path, r.vault.Redact(msg))
	}
	time.Sleep(r.settle())
	after, err := list()
	if err != nil {
		return nil, err
	}
	var added []string
	for k := range after {
		if !before[k] {
			added = append(added, k)
		}
	}
	slices.Sort(added)
	return added, nil
}
