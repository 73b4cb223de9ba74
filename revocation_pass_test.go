package instacart

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// These tests hold the revocation pass to what an adversarial review of it
// found (each failed on the first version of the paged queue).

// A flush of more queued tokens than one host's backlog, Connect healthy,
// revokes them all: the walk waits for room in a host's backlog rather than
// leaving a healthy host's tokens for later passes.
func TestFlushBiggerThanAHostBacklogRevokesAll(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	const n = 300
	for i := range n {
		queueEntry(t, e, "cc-excl", fmt.Sprintf("live-%d", i), e.b.now().Add(time.Hour))
	}
	resp := e.mustOK(logical.DeleteOperation, "cache/cc-excl", nil)
	if got := resp.Data["revoked_tokens"]; got != n {
		t.Errorf("revoked_tokens = %v, want %d", got, n)
	}
	if left := len(queuedKeys(t, e.storage, "cc-excl")); left != 0 {
		t.Errorf("%d of %d left queued after a flush with Connect healthy", left, n)
	}
}

// listGate parks the next List of one prefix after it ran.
type listGate struct {
	logical.Storage
	mu      sync.Mutex
	prefix  string
	reached chan struct{}
	release chan struct{}
}

func (l *listGate) List(ctx context.Context, prefix string) ([]string, error) {
	out, err := l.Storage.List(ctx, prefix)
	l.mu.Lock()
	hit := l.prefix != "" && prefix == l.prefix
	if hit {
		l.prefix = ""
	}
	l.mu.Unlock()
	if hit {
		close(l.reached)
		<-l.release
	}
	return out, err
}

// backingOff is a queued entry no periodic pass tries for an hour.
func backingOff(t *testing.T, e *testEnv, role, tok string) pendingRevocation {
	t.Helper()
	snap, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	now := e.b.now()
	return pendingRevocation{Role: role, revocable: revocable{CredentialsID: snap.config.CredentialsID, AccessToken: tok, ExpiresAt: now.Add(time.Hour)},
		Failures: 5, RetryAt: now.Add(time.Hour)}
}

// A token queued into a shard that did not exist when a pass listed the
// role's folder is still counted: the gauge equals what storage holds.
func TestCountKeepsEntryQueuedInANewShard(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	a := "token-a"
	if _, err := e.b.enqueue(context.Background(), e.storage, pendingKey("cc-excl", a), backingOff(t, e, "cc-excl", a)); err != nil {
		t.Fatal(err)
	}
	var b string
	for i := 0; ; i++ {
		if b = fmt.Sprintf("token-b-%d", i); queueUnit("cc-excl", pendingKey("cc-excl", b)) != queueUnit("cc-excl", pendingKey("cc-excl", a)) {
			break
		}
	}
	lg := &listGate{Storage: e.storage, prefix: queuePrefix("cc-excl"), reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := e.b.drainQueue(context.Background(), lg, "cc-excl", passPeriodic, newHostHealth())
		done <- err
	}()
	<-lg.reached // the pass listed the role's folder: a's shard only
	pk := pendingKey("cc-excl", b)
	if err := e.b.claims.claim(context.Background(), pk); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.enqueue(context.Background(), e.storage, pk, backingOff(t, e, "cc-excl", b)); err != nil {
		t.Fatal(err)
	}
	e.b.claims.release(pk)
	close(lg.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, known := e.b.queued.get("cc-excl")
	if stored := len(queuedKeys(t, e.storage, "cc-excl")); !known || got != int64(stored) {
		t.Errorf("gauge %d (known %v), storage holds %d", got, known, stored)
	}
}

// After a restart or a leadership change, a queue too long for one pass is
// counted over the passes it takes, and known only once every shard was.
func TestGaugeAfterRestartWithQueueLongerThanOnePass(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	const n = 300
	for i := range n {
		tok := fmt.Sprintf("waiting-%d", i)
		if _, err := e.b.enqueue(context.Background(), e.storage, pendingKey("cc-excl", tok), backingOff(t, e, "cc-excl", tok)); err != nil {
			t.Fatal(err)
		}
	}
	b2 := reloadBackend(t, e) // the new leader
	if err := b2.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cut := &cuttingStorage{Storage: e.storage, budget: 150, cancel: cancel}
	_ = b2.retryRevocations(ctx, cut) // cut off half-way, as a 30 s deadline cuts a big queue
	cancel()
	if _, known := b2.queued.get("cc-excl"); known {
		t.Fatal("the gauge is known after a pass that saw half the queue")
	}
	for range 2 { // goes on where the cut pass stopped, then from the start
		if err := b2.retryRevocations(context.Background(), e.storage); err != nil {
			t.Fatal(err)
		}
	}
	got, known := b2.queued.get("cc-excl")
	if !known || got != n {
		t.Errorf("gauge %d (known %v) while storage holds %d", got, known, n)
	}
}

// failingGet fails every read of one key, as a corrupt sealed entry does.
type failingGet struct {
	logical.Storage
	key string
}

func (f failingGet) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if key == f.key {
		return nil, errors.New("cipher: message authentication failed")
	}
	return f.Storage.Get(ctx, key)
}

// One entry storage cannot read blocks nothing: the others are revoked, the
// flush names it as waiting (502, not a 503 for the whole flush), and the
// periodic pass does not fail for it.
func TestUnreadableQueueEntryBlocksNothing(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for i := range 3 {
		queueEntry(t, e, "cc-excl", fmt.Sprintf("live-%d", i), e.b.now().Add(time.Hour))
	}
	queueEntry(t, e, "cc-excl", "unreadable", e.b.now().Add(time.Hour))
	e.storage = failingGet{e.storage, pendingKey("cc-excl", "unreadable")}
	_, err := e.do(logical.DeleteOperation, "cache/cc-excl", nil)
	if codedStatus(err) != 502 || !strings.Contains(err.Error(), "this flush revoked 3") || !strings.Contains(err.Error(), "1 of them could not be read from storage") {
		t.Fatalf("flush with one unreadable entry: %v, want a 502 that revoked the other 3 and names the unreadable one", err)
	}
	if err := e.b.periodic(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage}); err != nil {
		t.Errorf("periodic: %v", err)
	}
	if left := queuedKeys(t, e.storage, "cc-excl"); len(left) != 1 {
		t.Errorf("queue holds %d, want the unreadable entry only", len(left))
	}
}

// appliedButFailed applies a delete of key, then reports a failure, as a
// raft leader that loses leadership while committing does.
type appliedButFailed struct {
	logical.Storage
	key string
}

func (a *appliedButFailed) Delete(ctx context.Context, key string) error {
	err := a.Storage.Delete(ctx, key)
	if key == a.key {
		return errors.New("leadership lost while committing log")
	}
	return err
}

// A flush whose delete applied but reported a failure keeps the token
// queued (it is no longer stored), so it is revoked, not left live held by
// nothing.
func TestFlushWhoseDeleteAppliedDespiteAnErrorRevokes(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	e.storage = &appliedButFailed{Storage: e.storage, key: tokenKey("cc", "")}
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if e.fake.TokenLive(tok) {
		t.Error("the flushed token is live at Connect")
	}
	if n := len(queuedKeys(t, e.storage, "cc")); n != 0 {
		t.Errorf("%d queued", n)
	}
}

// A flush whose token delete fails and whose undo fails too leaves the token
// stored and queued: no pass revokes it while its key still holds it (it is
// served), and the next flush takes it out of service.
func TestQueuedTokenStillStoredIsNotRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	g := gateStorage(e)
	var failing sync.Mutex
	down := true
	g.failDelete = func(key string) error {
		failing.Lock()
		defer failing.Unlock()
		if down && (key == tokenKey("cc", "") || strings.HasPrefix(key, revokingStoragePrefix)) {
			return errors.New("disk unavailable")
		}
		return nil
	}
	if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); codedStatus(err) != 503 {
		t.Fatalf("flush on a failing disk: %v, want a 503", err)
	}
	if n := len(queuedKeys(t, e.storage, "cc")); n != 1 {
		t.Fatalf("%d queued; the failed undo should leave the token queued", n)
	}
	failing.Lock()
	down = false
	failing.Unlock()
	periodicPass(t, e)
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != tok || !e.fake.TokenLive(tok) {
		t.Fatalf("served %v, live %v: the token still stored was revoked under its readers", got == tok, e.fake.TokenLive(tok))
	}
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if e.fake.TokenLive(tok) {
		t.Error("the next flush did not revoke it")
	}
}

// A flush waits for an entry a lease revocation's first attempt holds, and
// answers for it: it never reports success past a token of its role that is
// still queued.
func TestFlushWaitsForAnEntryAnotherAttemptHolds(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	gate := newConnectGate(t, e.fake)
	behindGate(e, gate, nil)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)
	p := pendingRevocation{Role: "cc-excl", revocable: revocable{CredentialsID: resp.Secret.InternalData["credentials_id"].(string), AccessToken: tok, ExpiresAt: e.b.now().Add(time.Hour)}}
	gate.park(connectfake.PathRevoke)
	tryCtx, cancel := context.WithCancel(context.Background())
	attempt := make(chan error, 1)
	go func() {
		_, err := e.b.revokeNow(context.Background(), tryCtx, e.storage, p, "its lease was revoked")
		attempt <- err
	}()
	held := gate.next(t, "the lease revocation's attempt")
	type answer struct {
		resp *logical.Response
		err  error
	}
	flushed := make(chan answer, 1)
	go func() {
		r, err := e.do(logical.DeleteOperation, "cache/cc-excl", nil)
		flushed <- answer{r, err}
	}()
	cancel() // the attempt runs out of time: the token stays queued
	<-held.left
	if err := <-attempt; err != nil {
		t.Fatal(err)
	}
	gate.next(t, "the flush's own attempt").let()
	a := <-flushed
	if a.err != nil || a.resp.Data["revoked_tokens"] != 1 {
		t.Fatalf("flush: %v %v, want it to revoke the token the attempt left queued", a.resp, a.err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("the token is live after the flush")
	}
}

// contextBlind completes reads whatever the context (a read already answered
// when the deadline strikes).
type contextBlind struct{ logical.Storage }

func (c contextBlind) Get(_ context.Context, key string) (*logical.StorageEntry, error) {
	return c.Storage.Get(context.Background(), key)
}

// A flush cut off by its request's deadline during the queue pass answers
// 504, as when a storage call notices the deadline first.
func TestFlushOutOfTimeIs504(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for i := range 10 {
		queueEntry(t, e, "cc-excl", fmt.Sprintf("live-%d", i), e.b.now().Add(time.Hour))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.storage = &cuttingStorage{Storage: contextBlind{e.storage}, budget: 2, cancel: cancel}
	if _, err := e.doCtx(ctx, logical.DeleteOperation, "cache/cc-excl", nil); codedStatus(err) != 504 {
		t.Errorf("flush out of time: %v, want a 504", err)
	}
}

// appliedButFailedPut applies a write of key, then reports a failure.
type appliedButFailedPut struct {
	logical.Storage
	key string
}

func (a *appliedButFailedPut) Put(ctx context.Context, entry *logical.StorageEntry) error {
	err := a.Storage.Put(ctx, entry)
	if entry.Key == a.key {
		return errors.New("leadership lost while committing log")
	}
	return err
}

// A shared token whose store failed yet landed is live and served: the
// discard that follows the failure must not revoke it under its readers
// (the explorer's I9: it was revoked, then served from storage).
func TestPublishThatLandedDespiteAnErrorIsNotRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	real := e.storage
	e.storage = &appliedButFailedPut{Storage: real, key: tokenKey("cc", "")}
	if _, err := e.do(logical.ReadOperation, "creds/cc", nil); err == nil {
		t.Fatal("the read succeeded though its store reported a failure")
	}
	e.b.bg.wg.Wait()
	e.storage = real
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	if !e.fake.TokenLive(tok) {
		t.Fatal("the token storage holds was revoked: a read serves a token Connect refuses")
	}
	if n := len(queuedKeys(t, e.storage, "cc")); n != 0 {
		t.Errorf("%d queued for a token in service", n)
	}
}

// A lease revocation that can neither revoke its token nor queue it answers
// 503, and the engine keeps trying the token it holds in hand until it is
// revoked (Vault gives up on a lease after a few tries).
func TestLeaseRevocationKeepsTryingATokenInHand(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)
	refuseQueueWrites(e)
	waited := make(chan struct{}, 8)
	e.b.sleep = func(ctx context.Context, _ time.Duration) error {
		waited <- struct{}{}
		return ctx.Err()
	}
	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(3)...) // one call's attempts
	if err := revoke(e, resp.Secret); codedStatus(err) != 503 {
		t.Fatalf("revoke with neither Connect nor the queue: %v, want a 503", err)
	}
	e.b.bg.wg.Wait() // the background retry: Connect is back
	if len(waited) == 0 {
		t.Error("the background retry never backed off")
	}
	if e.fake.TokenLive(tok) {
		t.Error("the token in hand was never revoked once Connect was back")
	}
}

// deleteAppliedThenFailed applies every delete under prefix, then reports a failure.
type deleteAppliedThenFailed struct {
	logical.Storage
	prefix string
}

func (d *deleteAppliedThenFailed) Delete(ctx context.Context, key string) error {
	err := d.Storage.Delete(ctx, key)
	if strings.HasPrefix(key, d.prefix) {
		return errors.New("leadership lost while committing log")
	}
	return err
}

// A queue entry whose delete failed yet landed leaves the gauge one too
// high until a listing that overlaps no change sees storage, even when
// storage dropped the emptied role's folder altogether.
func TestGaugeHealsAfterADeleteThatLanded(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	queueEntry(t, e, "cc-excl", "doomed", e.b.now().Add(time.Hour))
	real := e.storage
	e.storage = &deleteAppliedThenFailed{Storage: real, prefix: revokingStoragePrefix}
	periodicPass(t, e) // revokes it; the dequeue reports a failure
	if n := len(queuedKeys(t, real, "cc-excl")); n != 0 {
		t.Fatalf("%d queued: the delete was to land", n)
	}
	e.storage = real
	periodicPass(t, e) // revoking/ no longer names the role
	if got, known := e.b.queued.get("cc-excl"); got != 0 || !known {
		t.Errorf("gauge %d (known %v) with the queue empty", got, known)
	}
}

// One role's queued tokens at a healthy host Y must not wait on the same
// role's token at a host X that never answers. revokeQueued tries a role's
// tokens per host, side by side: X's attempt (request_timeout × (1+max_retries):
// 40 s with the defaults) outlasts the role's turn (revokeRetryTimeout, 30 s);
// tried in key order, every pass would end inside it and Y's tokens sorting
// after it would never be tried. Here the pass's budget is a 3 s deadline.
func TestStuckHostDoesNotStarveItsRoleQueue(t *testing.T) {
	e := newTestEnv(t)
	x := newConnectGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": testClientID, "client_secret": testSecret,
		"base_url": x.URL, "verify": false, "max_retries": 0, "request_timeout": "60s"})
	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"grant_type": "fulfillment_user_assertion",
		"scopes": "connect:recommendations", "allowed_user_ids": "store-*"})
	atX := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-x"}).Data["access_token"].(string)

	y := connectfake.New()
	t.Cleanup(y.Close)
	y.AddClient("test-client-y", "fake-y-secret-for-tests-24680")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "test-client-y",
		"client_secret": "fake-y-secret-for-tests-24680", "base_url": y.URL, "verify": false})
	var after []string // tokens at Y queued after X's
	for i := 0; len(after) < 3 && i < 64; i++ {
		tok := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-y%d", i)}).Data["access_token"].(string)
		if pendingKey("shoppers", tok) > pendingKey("shoppers", atX) {
			after = append(after, tok)
		}
	}

	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	y.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	if _, err := e.do(logical.DeleteOperation, "cache/shoppers", nil); codedStatus(err) != 502 {
		t.Fatalf("flush with both hosts down: %v", err)
	}
	e.fake.ClearFaults()
	y.ClearFaults()

	x.park(connectfake.PathRevoke) // Y is back; X never answers
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = e.b.periodic(ctx, &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage})
	x.open(connectfake.PathRevoke)
	if l := liveTokens(y, after...); len(l) != 0 {
		t.Errorf("%d of %d tokens at healthy host Y still live after the pass (queue: %d entries)", len(l), len(after), len(queuedFor(t, e.storage, "shoppers")))
	}
}
