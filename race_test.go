package instacart

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// These tests force, with a storage call parked on a channel, the
// interleavings that could serve a revoked or stale token.

// A config change from another node (storage written, then Invalidate) that
// lands while this node loads the old config must not leave the old engine
// cached.
func TestConfigInvalidationDuringLoadIsNotLost(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	inner := e.storage
	g := gateStorage(e)
	e.b.resetSnapshot() // the next request loads the config from storage

	gt := g.park("get", configStoragePath)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.do(logical.ReadOperation, "creds/cc", nil)
	}()
	gt.awaitParked(t) // the old config has been read, not yet published

	cfg, err := getConfig(context.Background(), inner)
	if err != nil {
		t.Fatal(err)
	}
	cfg.CredentialsID = "rotated-elsewhere"
	if err := putConfig(context.Background(), inner, cfg); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), configStoragePath)
	close(gt.release)
	<-done

	eng, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	if eng.config.CredentialsID != "rotated-elsewhere" {
		t.Errorf("the engine loaded before the invalidation is still cached (credentials %q)", eng.config.CredentialsID)
	}
}

// A flush (or another node's delete plus Invalidate) that lands between a
// shared-token read from storage and its store into memory must win: the
// revoked token is never put back into memory.
func TestFlushDuringStorageReadIsNotUndone(t *testing.T) {
	for _, how := range []string{"flush", "invalidation"} {
		t.Run(how, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			key := tokenKey("cc", "")
			inner := e.storage
			g := gateStorage(e)
			e.b.tokens.clear() // as after a restart: the next read loads from storage

			gt := g.park("get", key)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = e.do(logical.ReadOperation, "creds/cc", nil)
			}()
			gt.awaitParked(t) // the token was read from storage, not yet remembered

			switch how {
			case "flush":
				e.mustOK(logical.DeleteOperation, "cache/cc", nil)
			case "invalidation":
				if err := inner.Delete(context.Background(), key); err != nil {
					t.Fatal(err)
				}
				e.b.invalidate(context.Background(), key)
			}
			close(gt.release)
			<-done

			if m := e.b.tokens.get(key); m != nil && m.AccessToken == old {
				t.Fatal("the flushed token was put back into memory")
			}
			next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			if next == old {
				t.Error("the flushed token is served again")
			}
		})
	}
}

// A mint in flight when its role is deleted must not store a token under the
// dead role, where a role re-created with the same definition would serve it
// and no flush could reach it meanwhile.
func TestRoleDeletedDuringMint(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := gateStorage(e)
	key := tokenKey("cc", "")

	gt := g.park("get", key) // refreshShared's storage read, just before the mint
	type result struct {
		resp *logical.Response
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
		res <- result{resp, err}
	}()
	gt.awaitParked(t)
	e.mustOK(logical.DeleteOperation, "roles/cc", nil)
	close(gt.release)
	r := <-res
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

func liveTokenCount(e *testEnv) int {
	n := 0
	for _, info := range e.fake.Tokens() {
		if !info.Revoked && info.ExpiresAt.After(time.Now()) {
			n++
		}
	}
	return n
}
