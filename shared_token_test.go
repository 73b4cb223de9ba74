package instacart

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func TestSharedRoleReusesItsTokenExclusiveMintsPerRead(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)

	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if first != second || e.fake.Mints() != 1 {
		t.Errorf("shared role: tokens equal %v, mints %d", first == second, e.fake.Mints())
	}

	a := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"]
	b := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"]
	if a == b || e.fake.Mints() != 3 {
		t.Errorf("exclusive role: tokens equal %v, mints %d", a == b, e.fake.Mints())
	}

	// Assertion roles share one token per user.
	u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"]
	u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"]
	u1again := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"]
	if u1 == u2 || u1 != u1again || e.fake.Mints() != 5 {
		t.Errorf("per-user sharing: u1==u2 %v, u1 stable %v, mints %d", u1 == u2, u1 == u1again, e.fake.Mints())
	}
}

// Concurrent cold readers share one mint: Connect holds the only token
// request until every reader is waiting on it, so they truly overlap.
func TestConcurrentColdReadsMintOnce(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	url, arrived, release := gatedConnect(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false})
	const readers = 100
	var waiting sync.WaitGroup
	waiting.Add(readers)
	e.b.hooks.sharedWait = waiting.Done
	go func() {
		<-arrived
		waiting.Wait() // every reader is waiting on the one mint
		close(release)
	}()

	var wg sync.WaitGroup
	tokens := make([]string, readers)
	errs := make([]error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			if err == nil {
				tokens[i] = resp.Data["access_token"].(string)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		if tokens[i] != tokens[0] {
			t.Fatalf("reader %d got a different token", i)
		}
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("%d concurrent cold reads minted %d tokens, want 1", readers, got)
	}
	e.b.hooks.sharedWait = nil
}

func TestSharedTokenReplacedNearExpiry(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.advance(22*time.Hour + 30*time.Minute) // 1h30m left: still above min_remaining_ttl
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != first {
		t.Error("replaced too early")
	}
	e.advance(time.Hour) // 30m left: below the default 1h
	second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if second == first || e.fake.Mints() != 2 {
		t.Errorf("not replaced near expiry (mints %d)", e.fake.Mints())
	}
}

func TestShortLivedTokensAreNotMintedPerRead(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.SetTokenLifetime(time.Minute) // shorter than min_remaining_ttl (1h)
	for range 5 {
		e.mustOK(logical.ReadOperation, "creds/cc", nil)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("5 reads of a 60 s token minted %d times, want 1", got)
	}
}

func TestServesCachedTokenWhileConnectIsDown(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.advance(23*time.Hour + 30*time.Minute) // inside min_remaining_ttl: a refresh is due
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] != first || len(resp.Warnings) == 0 {
		t.Errorf("want the cached token with a warning, got warnings %q", resp.Warnings)
	}
	// Once it has expired there is nothing safe to serve.
	e.advance(time.Hour)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if _, err := e.do(logical.ReadOperation, "creds/cc", nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("expired cache + Connect down: err = %v, want one naming 503", err)
	}
}

func TestSharedTokenSurvivesRestart(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]

	e.b = reloadBackend(t, e) // as after a Vault restart or plugin reload
	again := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if again != first || e.fake.Mints() != 1 {
		t.Errorf("after restart: same token %v, mints %d", again == first, e.fake.Mints())
	}
}

func TestRoleChangeDropsSharedToken(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] == first || !reflect.DeepEqual(resp.Data["scopes"], []string{"connect:fulfillment", "connect:ian"}) {
		t.Errorf("token minted for the old scopes was served: %v", resp.Data["scopes"])
	}
	// A ttl change does not touch what the token is, so it stays.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"ttl": "2h"})
	if again := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; again != resp.Data["access_token"] {
		t.Error("ttl change dropped the shared token")
	}
}

// TestBadUpstreamAnswersAreNeverCached feeds every kind of broken answer to a
// shared role's first read: each is an error (never a panic, never a token),
// nothing reaches storage, and the next read mints a working token.
func TestBadUpstreamAnswersAreNeverCached(t *testing.T) {
	faults := map[string]connectfake.Fault{
		"malformed JSON":     {Status: 200, Body: `{"access_token":`},
		"truncated JSON":     {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expi`},
		"expires_in 0":       {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":0}`},
		"expires_in -1":      {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":-1}`},
		"expires_in absurd":  {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":99999999999}`},
		"token_type mac":     {Status: 200, Body: `{"access_token":"x","token_type":"mac","expires_in":86400}`},
		"empty token":        {Status: 200, Body: `{"access_token":"","token_type":"Bearer","expires_in":86400}`},
		"connection reset":   {Reset: true},
		"500 with HTML body": {Status: 500, Body: "<html>oops</html>"},
	}
	for name, fault := range faults {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			before := e.storageSnapshot()
			e.fake.InjectFaults(connectfake.PathToken, fault)
			resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
			if err == nil && !resp.IsError() {
				t.Fatalf("a broken answer produced a token")
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Errorf("a broken answer changed storage")
			}
			tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			if usersStatus(t, e.fake.URL, tok) != 200 {
				t.Error("the token after recovery does not work")
			}
		})
	}
}

// A shared token with under a second left (min_remaining_ttl=0) is replaced
// by a fresh mint instead of failing the read.
func TestSharedTokenWithUnderASecondLeftIsReplaced(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"min_remaining_ttl": 0})
	now := time.Now()
	e.b.now = func() time.Time { return now }
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]

	now = now.Add(24*time.Hour - 500*time.Millisecond)
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] == first {
		t.Error("a token with half a second left was handed out again")
	}
	if resp.Secret.TTL < time.Hour {
		t.Errorf("lease TTL %v: the replacement is not fresh", resp.Secret.TTL)
	}
}

// A mint in flight when its role is deleted must not store a token under the
// dead role, where a role re-created with the same definition would serve it
// and no flush could reach it meanwhile.
func TestRoleDeletedDuringMint(t *testing.T) {
	t.Run("parked on the storage read before the mint", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.b.tokens.view.drop() // as on a mount that held tokens at start: the read is made
		g := gateStorage(e)
		gt := g.park("get", tokenKey("cc", "")) // refreshShared's storage read, just before the mint
		res := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
		gt.awaitParked(t)
		e.mustOK(logical.DeleteOperation, "roles/cc", nil)
		close(gt.release)
		checkRoleDeletedDuringMint(t, e, <-res)
	})
	t.Run("parked in the mint", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		h := holdTokenRequests(e)
		res := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
		h.awaitHeld(t)
		e.mustOK(logical.DeleteOperation, "roles/cc", nil)
		close(h.release)
		checkRoleDeletedDuringMint(t, e, <-res)
	})
}

func checkRoleDeletedDuringMint(t *testing.T, e *testEnv, r outcome) {
	t.Helper()
	key := tokenKey("cc", "")
	if r.err == nil && !r.resp.IsError() {
		t.Fatal("a token minted for a role deleted meanwhile was handed out")
	}
	if got := e.fake.Mints(); got != 1 {
		t.Fatalf("mints = %d, want 1", got)
	}
	for _, info := range e.fake.Tokens() {
		if !info.Revoked {
			t.Error("the token minted for the deleted role is still live at Connect")
		}
	}
	if snap := e.storageSnapshot(); snap[key] != "" {
		t.Error("a token was stored under the deleted role")
	}

	// The same definition again is a new role: its first read mints.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"})
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if got := e.fake.Mints(); got != 2 {
		t.Errorf("mints = %d after re-creating the role, want 2", got)
	}
}

func liveTokenCount(e *testEnv) int {
	n := 0
	for _, info := range e.fake.Tokens() {
		if !info.Revoked && info.ExpiresAt.After(time.Now()) {
			n++
		}
	}
	return n
}

// Vault cleaning the mount up while a shared mint is being published (the
// flight's context ends between minting and storing) leaves the token queued
// for revocation, not lost: the queue is written on a context of its own (the
// explorer's I2, seed 13 at the time).
func TestCleanupMidPublishQueuesTheToken(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	before := len(e.fake.Tokens()) // the config's verify token
	g := gateStorage(e)
	g.honourCtx = true // as Vault's gRPC storage refuses a call on an ended context
	g.failPut = func(key string) error {
		if key != tokenKey("cc", "") {
			return nil
		}
		e.b.bg.cancel() // the mount's clean-up, as the minted token is stored
		return context.Canceled
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.do(logical.ReadOperation, "creds/cc", nil)
		done <- err
	}()
	if err := <-done; err == nil {
		t.Fatal("the read succeeded though its token could not be stored")
	}
	e.b.bg.wg.Wait()
	toks := e.fake.Tokens()[before:]
	if len(toks) != 1 {
		t.Fatalf("%d tokens minted, want 1", len(toks))
	}
	keys := queuedKeys(t, e.storage, "cc")
	if len(keys) != 1 && !toks[0].Revoked {
		t.Errorf("the token minted as the mount was cleaned up is neither queued (%d queued) nor revoked", len(keys))
	}
	if stored := storedRoleKeys(t, e.storage, "cc"); len(stored) != 0 {
		t.Errorf("stored after the failed publish: %q", stored)
	}
}

// A reader whose whole deadline has passed by the time it is woken (a stall
// ate its answer margin) is still answered with the token its role serves,
// not with an error: the check behind that answer reads storage on a context
// of its own (the explorer's I6(a), seeds 161 and 814).
func TestFallbackCheckOutlivesTheReadersContext(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.advance(23*time.Hour + 30*time.Minute) // a refresh is due
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
	g := gateStorage(e)
	g.honourCtx = true // as Vault's gRPC storage refuses a call on an ended context
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan struct{})
	e.b.hooks.sharedWait = func() { close(waiting) }
	go func() {
		<-waiting
		cancel() // no deadline, so no margin: the reader's context ends outright
	}()
	resp, err := e.doCtx(ctx, logical.ReadOperation, "creds/cc", nil)
	if err != nil || resp.IsError() || resp.Data["access_token"] != first || len(resp.Warnings) == 0 {
		t.Errorf("got %v, %v; want the role's still-valid token with a warning", resp, err)
	}
	e.b.stopBackground() // ends the hung refresh
}

// The fallback (serve the token the role still serves while Connect
// fails) never hands out a token a flush took out of service meanwhile.
func TestFallbackNeverServesATokenFlushedMeanwhile(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newConnectGate(t, e.fake)
	behindGate(e, g, nil)
	advance := movableClock(e)
	old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	advance(23*time.Hour + 30*time.Minute) // past min_remaining_ttl: a refresh is due, the token valid

	g.park(connectfake.PathToken)
	read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	parked := g.next(t, "the refresh")

	e.mustOK(logical.DeleteOperation, "cache/cc", nil) // completes while the mint is parked
	if e.fake.TokenLive(old) {
		t.Fatal("the flush did not revoke the token")
	}

	e.fake.InjectFaults(connectfake.PathToken, unavailableFaults(3)...) // the parked mint and its retries
	g.open(connectfake.PathToken)
	parked.let()
	o := awaitOutcome(t, read, "the read")
	if tok := o.token(); tok == old {
		t.Fatal("the read handed out the flushed token")
	}
	if got := codedStatus(o.err); got != http.StatusBadGateway {
		t.Errorf("read: resp = %v, err = %v; want a coded 502", o.resp, o.err)
	}
}

// A mint with credentials rotated away while it was in flight never
// replaces the token minted with the new ones, and never leaves its own
// token live where nothing can reach it.
func TestMintWithRotatedAwayCredentialsIsNotPublished(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newConnectGate(t, e.fake)
	behindGate(e, g, nil)

	g.park(connectfake.PathToken)
	late := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	g.next(t, "the mint with the old credentials")

	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret, "verify": false})

	fresh := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	g.next(t, "the mint with the new credentials").let()
	o := awaitOutcome(t, fresh, "the read with the new credentials")
	n := o.token()
	if n == "" {
		t.Fatalf("read with the new credentials: resp = %v, err = %v", o.resp, o.err)
	}
	if info, _ := e.fake.Token(n); info.ClientID != newID {
		t.Fatalf("token N was minted by %q, want the new credentials", info.ClientID)
	}

	g.open(connectfake.PathToken) // lets the old credentials' mint through, and whatever follows
	lo := awaitOutcome(t, late, "the late read")
	minted := g.mintedTokens()
	if len(minted) != 2 {
		t.Fatalf("Connect issued %d tokens through the gate, want 2", len(minted))
	}
	lateTok := minted[0]
	if minted[0] == n {
		lateTok = minted[1]
	}

	key := tokenKey("cc", "")
	if got := storedAccessTokens(t, e.storage, roleTokenPrefix("cc"))[key]; got != n {
		t.Errorf("%s no longer holds token N: the late mint replaced it (holds the late token: %v)", key, got == lateTok)
	}
	// The late reader gets a 409 (read again), or a token; a token it did
	// not get must not be left live (the flush below checks that one it got
	// stays reachable).
	if lo.token() == "" {
		if codedStatus(lo.err) != http.StatusConflict {
			t.Errorf("late read: resp = %v, err = %v; want a 409 or a token", lo.resp, lo.err)
		}
		if e.fake.TokenLive(lateTok) {
			t.Error("the late token was handed to nobody and is live at Connect")
		}
	}
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != n {
		t.Error("a later read is not served token N")
	}

	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if l := liveTokens(e.fake, n, lateTok); len(l) != 0 {
		t.Errorf("after a flush %d of the role's tokens are still live (N live: %v, late live: %v)", len(l), e.fake.TokenLive(n), e.fake.TokenLive(lateTok))
	}
}

// A cached token that expires while its refresh is in flight, and the
// refresh then fails, is answered with a coded 502/504: never an expired
// token, never a 500 or an uncoded error.
func TestTokenExpiringDuringAFailingRefreshIsNotServed(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newConnectGate(t, e.fake)
	behindGate(e, g, nil)
	advance := movableClock(e)
	old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	advance(23*time.Hour + 30*time.Minute)

	g.park(connectfake.PathToken)
	read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	parked := g.next(t, "the refresh")
	advance(time.Hour) // the cached token expires while its refresh is parked

	e.fake.InjectFaults(connectfake.PathToken, unavailableFaults(3)...)
	g.open(connectfake.PathToken)
	parked.let()
	o := awaitOutcome(t, read, "the read")
	if o.token() == old {
		t.Fatal("an expired token was handed out")
	}
	if got := codedStatus(o.err); got != http.StatusBadGateway && got != http.StatusGatewayTimeout {
		t.Errorf("read: resp = %v, err = %v (status %d); want a coded 502 or 504", o.resp, o.err, got)
	}
}

// A shared token that is due for refresh but still valid is served, with
// a warning, when no mint slot comes free in time; and a 429 from the token
// endpoint never holds back a revocation.
func TestStillValidTokenServedWhenNoMintSlotFrees(t *testing.T) {
	t.Run("no mint slot", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		g := newConnectGate(t, e.fake)
		behindGate(e, g, map[string]any{"max_concurrent_mints": 1})
		advance := movableClock(e)
		tokB := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		advance(23*time.Hour + 30*time.Minute) // due for refresh, 30 minutes left

		g.park(connectfake.PathToken)
		readA := goDo(e, context.Background(), logical.ReadOperation, "creds/cc-excl", nil)
		slotHolder := g.next(t, "role cc-excl's mint")

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // the caller's deadline
		defer cancel()
		o := outcomeOf(e.doCtx(ctx, logical.ReadOperation, "creds/cc", nil))
		if got := o.token(); got != tokB {
			t.Errorf("read of cc while the only slot is taken: err = %v (status %d), served the still-valid token: %v; want it, with a warning", o.err, codedStatus(o.err), got == tokB)
		} else if len(o.resp.Warnings) == 0 {
			t.Error("the still-valid token was served without a warning")
		}

		g.open(connectfake.PathToken)
		slotHolder.let()
		if a := awaitOutcome(t, readA, "role cc-excl's read"); a.token() == "" {
			t.Errorf("role cc-excl's read: %v %v", a.resp, a.err)
		}
	})

	t.Run("429 does not hold back a revocation", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		tok := lease.Data["access_token"].(string)
		e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})

		// The token endpoint asks for a pause longer than the caller's deadline.
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "25"})
		if o := outcomeOf(e.do(logical.ReadOperation, "creds/cc-excl", nil)); o.token() != "" {
			t.Fatal("a 429 produced a token")
		}
		before := e.fake.Requests(connectfake.PathRevoke)

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // Vault's deadline for the revocation
		defer cancel()
		if _, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RevokeOperation, Secret: lease.Secret, Storage: e.storage}); err != nil {
			t.Fatalf("lease revocation: %v", err)
		}
		if got := e.fake.Requests(connectfake.PathRevoke) - before; got != 1 {
			t.Errorf("the lease revocation sent %d revoke requests while the token endpoint's pause was on, want 1", got)
		}
		if e.fake.TokenLive(tok) {
			t.Error("the lease's token is live after its revocation")
		}
	})
}
