package instacart

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
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

	if err := e.b.queueRevocation(context.Background(), e.storage, "cc", "", tok.revocable); err != nil {
		t.Fatal(err)
	}
	tally, err := e.b.revokeQueued(context.Background(), e.storage, "cc", newRevocationPass())
	if err != nil {
		t.Fatal(err)
	}
	if tally.revoked != 1 || e.fake.TokenLive(tok.AccessToken) {
		t.Errorf("tally %+v, token live %v: the token was dropped as if its credentials were gone", tally, e.fake.TokenLive(tok.AccessToken))
	}
}
