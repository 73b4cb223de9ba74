package instacart

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A token minted but never leased (the plugin died, or an error struck
// between the mint and the response) is revoked by Vault's WAL rollback.
func TestExclusiveMintIsCoveredByTheWAL(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	if keys := walKeys(t, e.storage); len(keys) != 0 {
		t.Fatalf("a successful read left %d write-ahead log entries", len(keys))
	}

	// The response cannot be completed and Connect cannot take the
	// revocation right now: the token is left to the WAL.
	g := gateStorage(e)
	g.failDelete = func(key string) error {
		if strings.HasPrefix(key, "wal/") && len(walKeys(t, g.Storage)) == 1 {
			return errors.New("storage unavailable")
		}
		return nil
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if _, err := e.do(logical.ReadOperation, "creds/cc-excl", nil); err == nil {
		t.Fatal("the read succeeded though its WAL entry could not be completed")
	}
	g.failDelete = nil
	keys := walKeys(t, e.storage)
	if len(keys) != 1 {
		t.Fatalf("%d write-ahead log entries, want 1 naming the token", len(keys))
	}
	entry, err := framework.GetWAL(context.Background(), e.storage, keys[0])
	if err != nil || entry == nil {
		t.Fatalf("reading the WAL entry: %v", err)
	}
	orphan, _ := entry.Data.(map[string]any)["access_token"].(string)
	if orphan == "" || !e.fake.TokenLive(orphan) {
		t.Fatal("the WAL entry does not name the live, unleased token")
	}

	rollback := func() {
		t.Helper()
		req := &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage, Data: map[string]any{"immediate": true}}
		if _, err := e.b.HandleRequest(context.Background(), req); err != nil {
			t.Fatalf("rollback: %v", err)
		}
	}
	rollback()
	if e.fake.TokenLive(orphan) {
		t.Error("the WAL rollback did not revoke the unleased token")
	}
	if keys := walKeys(t, e.storage); len(keys) != 0 {
		t.Errorf("%d write-ahead log entries left after the rollback", len(keys))
	}
}

// The rollback function itself: a token Connect cannot revoke now is queued
// (the queue retries it), an entry recorded before Connect answered has
// nothing to revoke.
func TestWALRollbackQueuesWhatConnectCannotRevokeNow(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)
	cfg, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	expires, _ := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	data := map[string]any{"role": "cc-excl", "credentials_id": cfg.CredentialsID, "access_token": tok, "expires_at": expires.Format(time.RFC3339Nano)}
	req := &logical.Request{Storage: e.storage}

	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if err := e.b.walRollback(context.Background(), req, walKindExclusiveToken, data); err != nil {
		t.Fatalf("rollback with Connect down: %v; the token should be queued", err)
	}
	if !e.fake.TokenLive(tok) || len(pendingKeys(t, e, "cc-excl")) != 1 {
		t.Fatal("a token Connect could not revoke was not left queued")
	}
	if err := e.b.periodic(context.Background(), req); err != nil {
		t.Fatalf("periodic: %v", err)
	}
	if e.fake.TokenLive(tok) || len(pendingKeys(t, e, "cc-excl")) != 0 {
		t.Error("the queue did not revoke the token the rollback queued")
	}
	intent := map[string]any{"role": "cc-excl", "credentials_id": cfg.CredentialsID}
	if err := e.b.walRollback(context.Background(), req, walKindExclusiveToken, intent); err != nil {
		t.Errorf("rolling back a mint that never got an answer: %v", err)
	}
}

// The write-ahead log is the node's own unfinished work: local storage,
// not replicated.
func TestWALIsLocalStorage(t *testing.T) {
	e := newTestEnv(t)
	if local := e.b.SpecialPaths().LocalStorage; !slices.Contains(local, "wal/") {
		t.Errorf("LocalStorage = %v, want it to hold wal/", local)
	}
}
