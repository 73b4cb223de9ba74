package instacart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A queued token is dropped as "its credentials are gone" only if storage
// says so: a node whose configuration snapshot predates the write of those
// credentials (a restart racing a config write elsewhere) still revokes it
// (the explorer's I2, seed 37 at the time).
func TestQueuedTokenOfCredentialsNewerThanTheSnapshotIsRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e) // this node's snapshot: the first credentials
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)

	// Another node writes new credentials and mints with them; this node
	// hears nothing (no invalidation reaches it).
	other := reloadBackend(t, e)
	for _, req := range []*logical.Request{
		{Operation: logical.UpdateOperation, Path: "config", Data: map[string]any{"client_id": newID, "client_secret": newSecret, "verify": false}},
		{Operation: logical.ReadOperation, Path: "creds/cc"},
	} {
		req.Storage = e.storage
		if resp, err := other.HandleRequest(context.Background(), req); err != nil || resp.IsError() {
			t.Fatalf("%s on the other node: %v %v", req.Path, resp, err)
		}
	}
	tok, err := other.tokens.load(context.Background(), e.storage, tokenKey("cc", ""))
	if err != nil || tok == nil {
		t.Fatalf("the other node's token: %v", err)
	}

	if _, err := e.b.enqueue(context.Background(), e.storage, pendingKey("cc", tok.AccessToken), pendingRevocation{Role: "cc", revocable: tok.revocable}); err != nil {
		t.Fatal(err)
	}
	tally, err := e.b.drainQueue(context.Background(), e.storage, "cc", passFlush, newHostHealth())
	if err != nil {
		t.Fatal(err)
	}
	if tally.revoked != 1 || e.fake.TokenLive(tok.AccessToken) {
		t.Errorf("tally %+v, token live %v: the token was dropped as if its credentials were gone", tally, e.fake.TokenLive(tok.AccessToken))
	}
}

// storageKeysUnder lists every key under prefix, whatever its depth.
func storageKeysUnder(t testing.TB, s logical.Storage, prefix string) []string {
	t.Helper()
	names, err := s.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, n := range names {
		if strings.HasSuffix(n, "/") {
			keys = append(keys, storageKeysUnder(t, s, prefix+n)...)
		} else {
			keys = append(keys, prefix+n)
		}
	}
	return keys
}

// queuedKeys lists a role's queued revocations (not those set aside).
func queuedKeys(t testing.TB, s logical.Storage, role string) []string {
	t.Helper()
	return storageKeysUnder(t, s, queuePrefix(role))
}

// queueEntry queues a made-up token of role directly, as a flush would.
func queueEntry(t *testing.T, e *testEnv, role, token string, expires time.Time) {
	t.Helper()
	snap, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	p := pendingRevocation{Role: role, revocable: revocable{CredentialsID: snap.config.CredentialsID, AccessToken: token, ExpiresAt: expires}}
	if _, err := e.b.enqueue(context.Background(), e.storage, pendingKey(role, token), p); err != nil {
		t.Fatal(err)
	}
}

// queuedCount is the pending-revocations gauge of role.
func queuedCount(t *testing.T, e *testEnv, role string) int64 {
	t.Helper()
	n, _ := e.b.queued.get(role)
	return n
}

// A flush whose storage delete fails puts the token back in service, and a
// periodic pass running meanwhile must not have revoked it: the queue entry
// stays claimed by the flush until the move is done or undone (issue 24,
// defect 1: the token stayed stored, revoked, and was served for hours).
func TestFailedFlushNeverServesATokenAPassRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	g := gateStorage(e)
	g.failDelete = func(key string) error {
		if key == tokenKey("cc", "") {
			return errors.New("storage unavailable")
		}
		return nil
	}
	queued := g.park("put", pendingKey("cc", tok)) // the flush has queued it and holds it

	flushed := make(chan error, 1)
	go func() {
		_, err := e.do(logical.DeleteOperation, "cache/cc", nil)
		flushed <- err
	}()
	queued.awaitParked(t)
	periodicPass(t, e) // finds the entry, claimed by the flush
	close(queued.release)
	if err := <-flushed; codedStatus(err) != 503 {
		t.Fatalf("flush whose storage delete failed: %v, want a 503", err)
	}

	if !e.fake.TokenLive(tok) {
		t.Fatal("the periodic pass revoked a token the failed flush put back in service")
	}
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != tok {
		t.Fatal("the token put back in service is not served")
	}
	if n := len(queuedKeys(t, e.storage, "cc")); n != 0 || queuedCount(t, e, "cc") != 0 {
		t.Errorf("queue holds %d, gauge %d; want both 0 after the undo", n, queuedCount(t, e, "cc"))
	}
}

// cuttingStorage ends a pass's context after its budget of queue reads, the
// way a per-role deadline ends a pass slowed by storage.
type cuttingStorage struct {
	logical.Storage
	mu     sync.Mutex
	budget int
	cancel context.CancelFunc
}

func (c *cuttingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if strings.HasPrefix(key, revokingStoragePrefix) {
		c.mu.Lock()
		if c.budget--; c.budget == 0 && c.cancel != nil {
			c.cancel()
		}
		c.mu.Unlock()
	}
	return c.Storage.Get(ctx, key)
}

// A queue too big for one pass drains over several: each pass revokes as it
// reads, drops expired entries without a call, keeps what it did when its
// deadline cuts it off, and the next goes on from there (issue 24, defect 2:
// a pass read every entry before revoking any, so a deadline during the
// reads left the queue to grow for ever).
func TestBigQueueDrainsAcrossCutPasses(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	rec := newRevokeRecorder(t, e.fake, "")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": rec.URL, "client_secret": testSecret, "verify": false})
	now := e.b.now()
	const live, expired = 400, 400
	for i := range live {
		queueEntry(t, e, "cc", fmt.Sprintf("live-%d", i), now.Add(time.Hour))
	}
	for i := range expired {
		queueEntry(t, e, "cc", fmt.Sprintf("expired-%d", i), now.Add(-time.Minute))
	}
	if queuedCount(t, e, "cc") != live+expired {
		t.Fatalf("gauge %d after queueing %d", queuedCount(t, e, "cc"), live+expired)
	}
	cut := &cuttingStorage{Storage: e.storage}
	passes := 0
	for ; passes < 20 && len(queuedKeys(t, e.storage, "cc")) > 0; passes++ {
		ctx, cancel := context.WithCancel(context.Background())
		cut.mu.Lock()
		cut.budget, cut.cancel = 150, cancel
		cut.mu.Unlock()
		before := len(queuedKeys(t, e.storage, "cc"))
		tally, _ := e.b.drainQueue(ctx, cut, "cc", passPeriodic, newHostHealth())
		cancel()
		if after := len(queuedKeys(t, e.storage, "cc")); after >= before {
			t.Fatalf("pass %d left %d of %d entries: a cut pass kept nothing (tally %+v)", passes+1, after, before, tally)
		}
	}
	if n := len(queuedKeys(t, e.storage, "cc")); n != 0 {
		t.Fatalf("%d entries left after %d passes", n, passes)
	}
	if passes < 2 {
		t.Fatalf("the queue drained in %d pass: the cut never happened", passes)
	}
	// A revocation in flight when a pass is cut off may be sent again by
	// the next (Connect answers 200 for a token it already revoked): at most
	// a host's workers' worth per cut.
	sent := 0
	for i := range live {
		n := rec.sent(fmt.Sprintf("live-%d", i))
		if n < 1 {
			t.Fatalf("live-%d was never sent", i)
		}
		sent += n
	}
	if sent > live+passes*revokesPerHost {
		t.Errorf("%d revocations sent for %d tokens over %d passes", sent, live, passes)
	}
	for i := range expired {
		if n := rec.sent(fmt.Sprintf("expired-%d", i)); n != 0 {
			t.Fatalf("expired-%d was sent to Connect %d times", i, n)
		}
	}
	if n := queuedCount(t, e, "cc"); n != 0 {
		t.Errorf("gauge %d with the queue empty", n)
	}
}

// A flush, the periodic pass and a lease revocation never work one entry
// together: while a flush's pass holds a role's queue, the periodic pass
// skips the role, and each token is revoked, counted and reported once
// (issue 24, defect 5: both passes revoked and dequeued the same entries,
// and the gauge read 0 while a token waited).
func TestOnePassPerRoleAtATime(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	gate := newConnectGate(t, e.fake)
	behindGate(e, gate, nil)
	var toks []string
	for range 3 {
		resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		toks = append(toks, resp.Data["access_token"].(string))
		p := pendingRevocation{Role: "cc-excl", revocable: revocable{CredentialsID: resp.Secret.InternalData["credentials_id"].(string), AccessToken: toks[len(toks)-1], ExpiresAt: e.b.now().Add(time.Hour)}}
		if _, err := e.b.enqueue(context.Background(), e.storage, pendingKey("cc-excl", p.AccessToken), p); err != nil {
			t.Fatal(err)
		}
	}
	e.fake.ResetCounters()
	gate.park(connectfake.PathRevoke)
	type answer struct {
		resp *logical.Response
		err  error
	}
	flushed := make(chan answer, 1)
	go func() {
		resp, err := e.do(logical.DeleteOperation, "cache/cc-excl", nil)
		flushed <- answer{resp, err}
	}()
	for i := range toks {
		gate.next(t, fmt.Sprintf("the flush's revocation %d", i+1))
	}
	periodicPass(t, e) // the flush holds the role's queue: nothing to do here
	select {
	case c := <-gate.arrived:
		c.let()
		t.Fatal("the periodic pass sent a revocation while the flush's pass held the queue")
	default:
	}
	gate.open(connectfake.PathRevoke)
	a := <-flushed
	if a.err != nil || a.resp.IsError() {
		t.Fatalf("flush: %v %v", a.resp, a.err)
	}
	if got := a.resp.Data["revoked_tokens"]; got != len(toks) {
		t.Errorf("flush revoked_tokens = %v, want %d", got, len(toks))
	}
	if got := e.fake.Requests(connectfake.PathRevoke); got != len(toks) {
		t.Errorf("%d revoke requests for %d tokens", got, len(toks))
	}
	if l := liveTokens(e.fake, toks...); len(l) != 0 {
		t.Errorf("%d tokens live after the flush", len(l))
	}
	if n, q := queuedCount(t, e, "cc-excl"), len(queuedKeys(t, e.storage, "cc-excl")); n != 0 || q != 0 {
		t.Errorf("gauge %d, queue %d; want 0 and 0", n, q)
	}
	again := e.mustOK(logical.DeleteOperation, "cache/cc-excl", nil)
	if got := again.Data["revoked_tokens"]; got != 0 {
		t.Errorf("a second flush reports %v revoked, want 0", got)
	}
}

// A lease revocation whose token cannot be queued (a deposed leader's
// storage refuses writes) still tries the token at Connect: it is in hand
// (issue 24, defect 7: it returned the queue error without a call, and the
// token stayed live, held by nothing).
func TestLeaseRevocationTriesTheTokenWhenTheQueueCannotBeWritten(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)
	refuseQueueWrites(e)
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke: %v; the token was revoked, so the lease may end", err)
	}
	if e.fake.TokenLive(tok) {
		t.Fatal("the token was never tried at Connect because the queue could not be written")
	}

	// Neither revoked nor queued: Vault must keep the lease and retry.
	resp = e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(5)...)
	err := revoke(e, resp.Secret)
	if codedStatus(err) != 503 {
		t.Fatalf("revoke with neither Connect nor the queue: %v, want a coded 503 so Vault retries", err)
	}
}

// An entry that cannot be decoded is set aside, counted and logged without
// secrets; the others of the role are revoked in the same pass.
func TestUndecodableQueueEntryIsSetAside(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"].(string)
	queueEntry(t, e, "cc-excl", tok, e.b.now().Add(time.Hour))
	bad := pendingKey("cc-excl", "garbled")
	if err := e.storage.Put(context.Background(), &logical.StorageEntry{Key: bad, Value: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}
	periodicPass(t, e)
	if e.fake.TokenLive(tok) {
		t.Error("the good entry waited behind the bad one")
	}
	if keys := queuedKeys(t, e.storage, "cc-excl"); len(keys) != 0 {
		t.Errorf("queue still holds %v", keys)
	}
	aside := storageKeysUnder(t, e.storage, asideStoragePrefix)
	if len(aside) != 1 || !strings.HasSuffix(aside[0], strings.TrimPrefix(bad, revokingStoragePrefix)) {
		t.Errorf("set aside: %v, want the bad entry", aside)
	}
	if got := e.scrape().get(metricRevocations, map[string]string{"outcome": "set_aside"}); got != 1 {
		t.Errorf("set_aside revocations %v, want 1", got)
	}
	if n := queuedCount(t, e, "cc-excl"); n != 0 {
		t.Errorf("gauge %d, want 0: the set-aside entry is not waiting", n)
	}
	if !strings.Contains(e.logs.String(), "set aside") {
		t.Error("the set-aside entry was not logged")
	}
	periodicPass(t, e) // and it is not read again
}

// revokeRecorder is a Connect host in front of fake that counts the
// revocations of each token and answers 500 to every revocation of bad.
type revokeRecorder struct {
	URL string
	mu  sync.Mutex
	n   map[string]int
}

func (r *revokeRecorder) sent(token string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[token]
}

func newRevokeRecorder(t *testing.T, fake *connectfake.Server, bad string) *revokeRecorder {
	rec := &revokeRecorder{n: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == connectfake.PathRevoke {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var sent struct {
				Token string `json:"token"`
			}
			_ = json.Unmarshal(body, &sent)
			rec.mu.Lock()
			rec.n[sent.Token]++
			rec.mu.Unlock()
			if bad != "" && sent.Token == bad {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, `{"error":"server_error"}`)
				return
			}
		}
		fake.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
}

// A token that keeps failing backs off on its own schedule, and the other
// tokens of its host and role go on meanwhile.
func TestFailingTokenBacksOffAlone(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	move := movableClock(e)
	var toks []string
	for range 4 {
		toks = append(toks, e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"].(string))
	}
	bad := toks[0]
	rec := newRevokeRecorder(t, e.fake, bad)
	attempts := func() int { return rec.sent(bad) }
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": rec.URL, "client_secret": testSecret, "verify": false, "max_retries": 0})
	for _, tok := range toks {
		queueEntry(t, e, "cc-excl", tok, e.b.now().Add(time.Hour))
	}
	for pass := 1; pass <= 3; pass++ {
		periodicPass(t, e)
		if got := attempts(); got != pass {
			t.Fatalf("after pass %d the bad token was tried %d times, want once a pass until it backs off", pass, got)
		}
	}
	if l := liveTokens(e.fake, toks[1:]...); len(l) != 0 {
		t.Errorf("%d good tokens of the same host still live behind the bad one", len(l))
	}
	periodicPass(t, e) // backing off: a minute after its third failure
	if got := attempts(); got != 3 {
		t.Fatalf("the bad token was tried again at once after 3 failures (%d attempts)", got)
	}
	move(61 * time.Second)
	periodicPass(t, e)
	if got := attempts(); got != 4 {
		t.Errorf("the bad token was not tried once its back-off ended (%d attempts)", got)
	}
	// A flush tries it now, back-off or not.
	if _, err := e.do(logical.DeleteOperation, "cache/cc-excl", nil); codedStatus(err) != 502 {
		t.Errorf("flush with the bad token failing: %v, want a 502", err)
	}
	if got := attempts(); got != 5 {
		t.Errorf("the flush did not try the backing-off token (%d attempts)", got)
	}
	if n := queuedCount(t, e, "cc-excl"); n != 1 {
		t.Errorf("gauge %d, want 1 (the bad token)", n)
	}
}

// refuseQueueWrites makes e's storage refuse every write to the revocation
// queue, as a deposed leader's does.
func refuseQueueWrites(e *testEnv) {
	gateStorage(e).failPut = func(key string) error {
		if strings.HasPrefix(key, revokingStoragePrefix) {
			return errors.New("node is not the leader")
		}
		return nil
	}
}

// A token nobody will hold that cannot be revoked at once (Connect's
// revoke endpoint failing) is queued, not dropped, and the periodic function
// revokes it once Connect recovers.
func TestDiscardedTokenConnectWillNotRevokeIsQueuedAndRetried(t *testing.T) {
	for _, tc := range []struct {
		name, role string
		run        func(t *testing.T, e *testEnv, g *connectGate, s *gatedStorage)
	}{
		{"abandoned exclusive mint", "cc-excl", func(t *testing.T, e *testEnv, g *connectGate, s *gatedStorage) {
			walDone := s.park("delete", "wal/*") // the abandoned mint's last step
			g.park(connectfake.PathToken)
			ctx, cancel := context.WithCancel(context.Background())
			read := goDo(e, ctx, logical.ReadOperation, "creds/cc-excl", nil)
			parked := g.next(t, "the exclusive mint")
			cancel() // the caller leaves while the mint is in flight
			if o := awaitOutcome(t, read, "the abandoned read"); o.token() != "" {
				t.Fatal("the abandoned read got a token")
			}
			parked.let() // Connect answers after all
			select {
			case <-walDone.reached:
			case <-time.After(hangGuard):
				t.Error("the abandoned mint's clean-up never finished: its write-ahead log entry was never dropped")
			}
			close(walDone.release)
		}},
		{"unusable answer naming a token", "cc", func(t *testing.T, e *testEnv, g *connectGate, s *gatedStorage) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: http.StatusOK,
				Body: `{"access_token":"` + connectfake.PlaceholderAccessToken + `","token_type":"Bearer","expires_in":"soon"}`})
			o := outcomeOf(e.do(logical.ReadOperation, "creds/cc", nil))
			if o.token() != "" || o.err == nil && (o.resp == nil || !o.resp.IsError()) {
				t.Fatalf("an unusable answer was not an error: resp = %v, err = %v", o.resp, o.err)
			}
		}},
		{"shared token of a role changed while minting", "cc", func(t *testing.T, e *testEnv, g *connectGate, s *gatedStorage) {
			g.park(connectfake.PathToken)
			read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
			parked := g.next(t, "the shared mint")
			e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
			parked.let()
			if o := awaitOutcome(t, read, "the read"); o.token() != "" {
				t.Fatal("a token minted for the previous definition of the role was handed out")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			g := newConnectGate(t, e.fake)
			behindGate(e, g, nil)
			s := gateStorage(e)
			e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(20)...)

			tc.run(t, e, g, s)

			minted := g.mintedTokens()
			if len(minted) != 1 {
				t.Fatalf("Connect issued %d tokens, want 1", len(minted))
			}
			tok := minted[0]
			if !e.fake.TokenLive(tok) {
				t.Fatal("the token was revoked although Connect's revoke endpoint failed")
			}
			queued := storedAccessTokens(t, e.storage, revokingStoragePrefix+tc.role+"/")
			if len(queued) != 1 || !slices.Contains(slices.Collect(maps.Values(queued)), tok) {
				t.Fatalf("revoking/%s/ holds %d tokens (the one minted: %v), want it queued", tc.role, len(queued), slices.Contains(slices.Collect(maps.Values(queued)), tok))
			}

			e.fake.ClearFaults() // Connect recovers
			periodicPass(t, e)
			if e.fake.TokenLive(tok) {
				t.Error("the queued token is live after the periodic retry")
			}
			if n := len(queuedFor(t, e.storage, tc.role)); n != 0 {
				t.Errorf("%d tokens left in the queue after the retry revoked them", n)
			}
		})
	}
}

// One role's revocation stuck at a host that does not answer holds up
// no other role's revocations in the same periodic pass.
func TestOneRolesStuckHostHoldsUpNoOtherRole(t *testing.T) {
	e := newTestEnv(t)
	x := newConnectGate(t, e.fake) // host X: the fake behind a gate
	e.mustOK(logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": testSecret, "base_url": x.URL, "verify": false, "max_retries": 0,
		"request_timeout": "60s", // X never answers: no attempt ends before the test lets it
	})
	for _, name := range []string{"aaa", "bbb"} {
		e.mustOK(logical.UpdateOperation, "roles/"+name, map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment", "token_reuse": "exclusive"})
	}
	leaseA := e.mustOK(logical.ReadOperation, "creds/aaa", nil)
	tokA := leaseA.Data["access_token"].(string)

	y := connectfake.New() // host Y, with its own application
	t.Cleanup(y.Close)
	const yID, ySecret = "test-client-y", "fake-y-secret-for-tests-24680"
	y.AddClient(yID, ySecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": yID, "client_secret": ySecret, "base_url": y.URL, "verify": false})
	leaseB := e.mustOK(logical.ReadOperation, "creds/bbb", nil)
	tokB := leaseB.Data["access_token"].(string)
	if !y.TokenLive(tokB) || !e.fake.TokenLive(tokA) {
		t.Fatal("the tokens were not minted at their hosts")
	}

	// Both hosts fail the lease revocations: both tokens are queued.
	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	y.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	for _, lease := range []*logical.Secret{leaseA.Secret, leaseB.Secret} {
		if err := revoke(e, lease); err != nil {
			t.Fatalf("lease revocation with Connect down: %v", err)
		}
	}
	if a, b := len(queuedFor(t, e.storage, "aaa")), len(queuedFor(t, e.storage, "bbb")); a != 1 || b != 1 {
		t.Fatalf("queued revocations: aaa %d, bbb %d; want 1 each", a, b)
	}

	// Y recovers; X accepts the revocation and never answers.
	e.fake.ClearFaults()
	y.ClearFaults()
	x.park(connectfake.PathRevoke)
	pass := make(chan error, 1)
	go func() {
		pass <- e.b.periodic(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage})
	}()
	stuck := x.next(t, "role aaa's revocation")
	if !waitUntil(func() bool { return !y.TokenLive(tokB) }) {
		t.Error("role bbb's token was not revoked while role aaa's revocation was stuck at host X")
	}
	if !e.fake.TokenLive(tokA) {
		t.Fatal("role aaa's token was revoked although host X never answered")
	}
	x.open(connectfake.PathRevoke)
	stuck.let()
	select {
	case err := <-pass:
		if err != nil {
			t.Errorf("periodic: %v", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("the periodic pass never ended")
	}
	if e.fake.TokenLive(tokA) {
		t.Error("role aaa's token is live once host X answered")
	}
	if a, b := len(queuedFor(t, e.storage, "aaa")), len(queuedFor(t, e.storage, "bbb")); a != 0 || b != 0 {
		t.Errorf("queued revocations left: aaa %d, bbb %d", a, b)
	}
}

// A lease revocation whose try at Connect runs out the request's deadline
// (Connect accepts and never answers) must still leave the token queued: it
// is queued before it is tried (queued after, with the same expired context,
// the queue write failed and nothing was queued).
func TestLeaseRevocationIsQueuedBeforeItIsTried(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0, "request_timeout": "60s"})
	lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := lease.Data["access_token"].(string)
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Hang: true})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // Vault's deadline for the revocation
	defer cancel()
	_, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RevokeOperation, Secret: lease.Secret, Storage: e.storage})
	if n := len(queuedFor(t, e.storage, "cc-excl")); n != 1 || !e.fake.TokenLive(tok) {
		t.Errorf("revocation err = %v; queued %d, want the live token queued", err, n)
	}
}
