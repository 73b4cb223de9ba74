package instacart

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func TestCacheFlushRevokesSharedTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	role := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
	u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"].(string)

	resp := e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
	assertFlushCounts(t, resp, 2, 0, 0)
	if e.fake.TokenLive(u1) || e.fake.TokenLive(u2) {
		t.Error("flushed tokens still live at Connect")
	}
	if got := usersStatus(t, e.fake.URL, u1); got != 401 {
		t.Errorf("flushed token: Connect answered %d", got)
	}
	if !e.fake.TokenLive(role) {
		t.Error("flushing one role revoked another role's token")
	}
	fresh := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
	if fresh == u1 || !e.fake.TokenLive(fresh) {
		t.Error("the next read did not mint a fresh token")
	}
}

// A token whose revocation fails for now is taken out of service at once
// (never handed out again, even while Connect may have processed the
// revocation), the flush fails naming it, and the revocation is retried by
// the next flush or the periodic function.
func TestCacheFlushTakesTokenOutOfServiceWhenRevokeFails(t *testing.T) {
	for _, retry := range []string{"flush", "periodic"} {
		t.Run(retry, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500})
			_, err := e.do(logical.DeleteOperation, "cache/cc", nil)
			if err == nil || !strings.Contains(err.Error(), "the role-wide token") {
				t.Fatalf("flush: err = %v, want a failure naming the token", err)
			}
			if !e.fake.TokenLive(tok) {
				t.Fatal("token revoked despite the failure")
			}
			if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got == tok {
				t.Fatal("a token being flushed is still handed out")
			}
			switch retry {
			case "flush":
				// The token read meanwhile and the one left pending: both revoked now.
				assertFlushCounts(t, e.mustOK(logical.DeleteOperation, "cache/cc", nil), 2, 0, 0)
			case "periodic":
				req := &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage}
				if _, err := e.b.HandleRequest(context.Background(), req); err != nil {
					t.Fatal(err)
				}
			}
			if e.fake.TokenLive(tok) {
				t.Error("token live after the retry")
			}
			for k := range e.storageSnapshot() {
				if strings.HasPrefix(k, revokingStoragePrefix) {
					t.Errorf("pending revocation %s left after it succeeded", k)
				}
			}
		})
	}
}

func TestCacheFlushValidation(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp, err := e.do(logical.DeleteOperation, "cache/-bad-", nil)
	expectError(t, resp, err, "name")
	// A role that never existed holds nothing: a no-op, as is nothing cached.
	assertFlushCounts(t, e.mustOK(logical.DeleteOperation, "cache/nope", nil), 0, 0, 0)
	assertFlushCounts(t, e.mustOK(logical.DeleteOperation, "cache/cc", nil), 0, 0, 0)
}

// assertFlushCounts checks the counts a successful flush answers with.
func assertFlushCounts(t *testing.T, resp *logical.Response, revoked, expired, refused int) {
	t.Helper()
	want := map[string]any{"revoked_tokens": revoked, "expired_tokens": expired, "refused_tokens": refused, "pending_tokens": 0}
	if resp == nil || !maps.Equal(resp.Data, want) {
		var got map[string]any
		if resp != nil {
			got = resp.Data
		}
		t.Errorf("flush answered %v, want %v", got, want)
	}
}

// After base_url moves to another host, a flush still revokes each token at
// the host, and with the credentials, that minted it; the new host, which
// answers 200 for tokens it does not know, is never asked.
func TestCacheFlushRevokesWhereMinted(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)

	other := connectfake.New()
	t.Cleanup(other.Close)
	other.AddClient(testClientID, testSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": other.URL, "client_secret": testSecret})
	other.ResetCounters()

	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if e.fake.TokenLive(tok) {
		t.Error("the flushed token is still live at the host that minted it")
	}
	if got := other.Requests(connectfake.PathRevoke); got != 0 {
		t.Errorf("the new host got %d revoke requests for a token it never minted", got)
	}
}

// A flush carries on past a token Connect refuses to revoke: it revokes the
// rest, drops them all, and names the one it could not revoke.
func TestCacheFlushCarriesOnPastRefusal(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	var toks []string
	for _, u := range []string{"store-1", "store-2", "store-3"} {
		toks = append(toks, e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": u}).Data["access_token"].(string))
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 403, Body: `{"error":"unauthorized_client","error_description":"echoed-by-connect"}`})

	resp := e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
	assertFlushCounts(t, resp, 2, 0, 1)
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "refused to revoke 1 token") || !strings.Contains(resp.Warnings[0], "the token of user #") || strings.Contains(resp.Warnings[0], "store-") {
		t.Errorf("warnings = %q, want one naming the refused token's user by hash, never by id", resp.Warnings)
	}
	live := 0
	for _, tok := range toks {
		if e.fake.TokenLive(tok) {
			live++
		}
	}
	if live != 1 {
		t.Errorf("%d tokens live after the flush, want 1 (the refused one)", live)
	}
	if keys := storedRoleKeys(t, e.storage, "shoppers"); len(keys) != 0 {
		t.Errorf("%d tokens left in storage", len(keys))
	}
	if got := e.b.tokens.memoryKeys("shoppers"); len(got) != 0 {
		t.Errorf("%d tokens left in memory", len(got))
	}
	// What Connect says about a revocation could echo the token: it stays
	// out of responses and logs, which name the status and code instead.
	if strings.Contains(resp.Warnings[0], "echoed-by-connect") || strings.Contains(e.logs.String(), "echoed-by-connect") {
		t.Error("Connect's description of a refused revocation reached a warning or a log line")
	}
	if !strings.Contains(e.logs.String(), "HTTP 403 unauthorized_client") {
		t.Error("the log does not name Connect's status and code")
	}
}

// A flush also revokes and forgets tokens held in memory that storage does
// not hold.
func TestCacheFlushForgetsMemoryOnlyTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	if err := e.storage.Delete(context.Background(), tokenKey("cc", "")); err != nil {
		t.Fatal(err)
	}
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if e.b.tokens.get(tokenKey("cc", "")) != nil {
		t.Error("a token held only in memory survived the flush")
	}
	if e.fake.TokenLive(tok) {
		t.Error("a token held only in memory was not revoked")
	}
	if next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; next == tok {
		t.Error("the flushed token is served again")
	}
}

// A token minted and stored while a flush is taking the role's tokens out of
// service is never dropped unrevoked: every token Connect issued is either
// revoked or still held where the next flush finds it.
func TestMintDuringFlushIsNotOrphaned(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	url, arrived, release := gatedConnect(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false})
	read := func() chan *logical.Response {
		ch := make(chan *logical.Response, 1)
		go func() {
			resp, _ := e.do(logical.ReadOperation, "creds/cc", nil)
			ch <- resp
		}()
		return ch
	}
	first := read()
	<-arrived
	release <- struct{}{}
	old := (<-first).Data["access_token"].(string)

	key := tokenKey("cc", "")
	g := gateStorage(e)
	gt := g.park("delete", key)
	flushed := make(chan error, 1)
	go func() {
		_, err := e.do(logical.DeleteOperation, "cache/cc", nil)
		flushed <- err
	}()
	gt.awaitParked(t) // the flush has taken the old token out, and holds the role lock

	second := read() // a reader mints a replacement meanwhile
	<-arrived
	release <- struct{}{}
	close(gt.release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	resp := <-second
	if resp == nil || resp.IsError() {
		t.Fatalf("the read during the flush failed: %v", resp)
	}
	if e.fake.TokenLive(old) {
		t.Error("the flushed token is live")
	}
	held := e.b.tokens.get(key)
	if held == nil || !e.fake.TokenLive(held.AccessToken) {
		t.Fatal("the replacement is not held where a flush can find it")
	}
	if live := liveTokenCount(e); live != 1 {
		t.Errorf("%d live tokens at Connect, want 1 (the held replacement)", live)
	}
	if next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; next != held.AccessToken {
		t.Error("the replacement minted during the flush is not served")
	}
}

// A token left pending by a failed flush that expires before the next one is
// dropped without a call to Connect, and counted as expired, not revoked.
func TestCacheFlushCountsExpiredPending(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500})
	if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); err == nil || !strings.Contains(err.Error(), "this flush revoked 0") {
		t.Fatalf("flush: err = %v, want a 502 saying it revoked none", err)
	}
	e.advance(25 * time.Hour)
	e.fake.ResetCounters()
	assertFlushCounts(t, e.mustOK(logical.DeleteOperation, "cache/cc", nil), 0, 1, 0)
	if got := e.fake.Requests(connectfake.PathRevoke); got != 0 {
		t.Errorf("%d revoke requests for an expired token", got)
	}
}

// A flush whose caller leaves between queueing a token for revocation and
// dropping it from storage still finishes the move: a token queued to be
// revoked is never served again (found by the schedule explorer, I1).
func TestFlushWhoseCallerLeavesFinishesTheMove(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	g := gateStorage(e)
	g.honourCtx = true                         // as Vault's storage over gRPC: a call on an ended context fails
	gt := g.park("put", pendingKey("cc", tok)) // queued; parked before the drop from tokens/

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.doCtx(ctx, logical.DeleteOperation, "cache/cc", nil)
	}()
	gt.awaitParked(t)
	cancel() // the caller leaves with the token queued, not yet dropped
	close(gt.release)
	<-done

	if stored, err := e.b.tokens.load(context.Background(), e.storage, tokenKey("cc", "")); err != nil || stored != nil {
		t.Fatalf("the flushed token is still stored (err %v)", err)
	}
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] == tok {
		t.Fatal("a read after the flush was served the token queued for revocation")
	}
}

// A flush of a name that is no role and holds nothing says so, rather than
// answering every count at 0 as if it had done its work.
func TestFlushOfAnUnknownRoleWarns(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.DeleteOperation, "cache/no-such-role", nil)
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `no role "no-such-role" exists`) {
		t.Errorf("warnings %q, want one saying no such role exists", resp.Warnings)
	}
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp := e.mustOK(logical.DeleteOperation, "cache/cc", nil); len(resp.Warnings) != 0 {
		t.Errorf("a flush of a real role warns %q", resp.Warnings)
	}
}
