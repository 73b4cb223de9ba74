package instacart

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// awaitBackground waits for the mount's background work to end (the bound
// only guards against a hung test). Nothing may start more meanwhile.
func awaitBackground(t *testing.T, b *backend) {
	t.Helper()
	done := make(chan struct{})
	go func() { b.bg.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("background work never ended")
	}
}

// A config write's caller leaves while Connect is minting the verify token:
// the check goes on, the credentials are saved (on storage that, like
// Vault's, refuses a done context), and the token goes through the
// revocation queue. Cut short, the token was live at Connect with nothing
// holding it, and the write answered an uncoded 500.
func TestVerifyOutlivesTheCaller(t *testing.T) {
	e := newTestEnv(t)
	g := gateStorage(e)
	g.honourCtx = true
	url, arrived, release := gatedConnect(t, e.fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answered := goDo(e, ctx, logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": testSecret, "base_url": url, "verify": true,
	})
	select {
	case <-arrived:
	case <-time.After(hangGuard):
		t.Fatal("the verify token request never reached Connect")
	}
	cancel()              // the caller leaves while Connect mints
	release <- struct{}{} // Connect answers
	awaitOutcome(t, answered, "the config write")

	cfg, err := getConfig(context.Background(), e.storage)
	if err != nil || !cfg.configured() || cfg.BaseURL != url {
		t.Fatalf("the verified credentials were not saved (err %v)", err)
	}
	toks := e.fake.Tokens()
	if len(toks) != 1 {
		t.Fatalf("%d tokens minted, want the verify token", len(toks))
	}
	if !toks[0].Revoked && len(queuedFor(t, e.storage, verifyQueue)) != 1 {
		t.Error("the verify token is live and not queued for revocation")
	}
}

// The credentials a verify token was minted with cannot be saved (storage
// fails): the queue cannot retry it, so its revocation is retried in the
// background, waiting as long as Connect's 429 asks; the write answers a
// coded 503 and saves nothing. One attempt left the token live.
func TestVerifyTokenOfUnsavedConfigRevokedDespite429(t *testing.T) {
	e := newTestEnv(t)
	g := gateStorage(e)
	g.failPut = func(key string) error {
		if key == configStoragePath {
			return errStorageDown
		}
		return nil
	}
	waits := make(chan time.Duration, 1)
	e.b.sleep = func(_ context.Context, d time.Duration) error {
		waits <- d
		return nil
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "7"})
	_, err := e.do(logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": testSecret, "base_url": e.fake.URL, "verify": true, "max_retries": 0,
	})
	if got := codedStatus(err); got != http.StatusServiceUnavailable {
		t.Errorf("the write answered %v (status %d), want a coded 503", err, got)
	}
	select {
	case d := <-waits:
		if d < 7*time.Second {
			t.Errorf("the retry waited %s; Connect's 429 asked for 7s", d)
		}
	case <-time.After(hangGuard):
		t.Fatal("the revocation was not retried after Connect's 429")
	}
	awaitBackground(t, e.b)
	toks := e.fake.Tokens()
	if len(toks) != 1 || !toks[0].Revoked {
		t.Fatalf("want the one verify token revoked by the retry (%d tokens)", len(toks))
	}
	if got := e.fake.Requests(connectfake.PathRevoke); got != 2 {
		t.Errorf("%d revocation requests, want the 429 and the retry", got)
	}
	if cfg, err := getConfig(context.Background(), e.storage); err != nil || cfg != nil {
		t.Errorf("config stored though its write failed (err %v)", err)
	}
}

// outliveCaller's context survives the caller leaving, or the mount's
// clean-up while the caller still waits, and ends once both have happened.
func TestOutliveCallerEndsWithCallerAndMount(t *testing.T) {
	ended := func(ctx context.Context) bool {
		select {
		case <-ctx.Done():
			return true
		case <-time.After(hangGuard):
			return false
		}
	}
	t.Run("caller leaves, then the mount goes", func(t *testing.T) {
		e := newTestEnv(t)
		caller, leave := context.WithCancel(context.Background())
		ctx, cancel := e.b.outliveCaller(caller, time.Hour)
		defer cancel()
		leave()
		if ctx.Err() != nil {
			t.Fatal("ended with the caller")
		}
		e.b.stopBackground()
		if !ended(ctx) {
			t.Error("outlived the mount's clean-up after the caller left")
		}
	})
	t.Run("the mount goes, then the caller leaves", func(t *testing.T) {
		e := newTestEnv(t)
		caller, leave := context.WithCancel(context.Background())
		ctx, cancel := e.b.outliveCaller(caller, time.Hour)
		defer cancel()
		e.b.stopBackground()
		if ctx.Err() != nil {
			t.Fatal("ended with the mount while the caller waits")
		}
		leave()
		if !ended(ctx) {
			t.Error("outlived both the caller and the mount")
		}
	})
}
