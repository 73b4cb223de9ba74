package instacart

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestStressConcurrentReadsAndWrites runs readers of several roles against
// writers that rotate config, recreate roles and flush caches, under -race.
// Afterwards every token handed out is one Connect issued, every exclusive
// lease revokes, and storage decodes cleanly.
func TestStressConcurrentReadsAndWrites(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	const altID, altSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(altID, altSecret)

	type issued struct {
		token  string
		secret *logical.Secret
	}
	var (
		mu      sync.Mutex
		handed  []issued
		reads   atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		failure atomic.Value
	)
	fail := func(format string, args ...any) { failure.CompareAndSwap(nil, fmt.Sprintf(format, args...)) }

	roles := []string{"cc", "cc-excl", "shopper", "cc-capped"}
	for i := range 40 { // readers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := e.do(logical.ReadOperation, "creds/"+roles[i%len(roles)], nil)
				if codedStatus(err) == http.StatusConflict {
					continue // the role changed while its token was minted: read again
				}
				if err != nil {
					fail("reader: %v", err)
					return
				}
				if resp.IsError() {
					// A role deleted by a writer a moment ago is a fair answer.
					if !strings.Contains(resp.Error().Error(), "unknown role") {
						fail("reader: %v", resp.Error())
					}
					continue
				}
				reads.Add(1)
				mu.Lock()
				handed = append(handed, issued{resp.Data["access_token"].(string), resp.Secret})
				mu.Unlock()
			}
		}()
	}
	writers := []func(n int) (*logical.Response, error){
		func(n int) (*logical.Response, error) { // rotate between two applications
			id, secret := testClientID, testSecret
			if n%2 == 1 {
				id, secret = altID, altSecret
			}
			return e.do(logical.UpdateOperation, "config", map[string]any{"client_id": id, "client_secret": secret, "verify": n%3 == 0})
		},
		func(n int) (*logical.Response, error) { // recreate a role
			if n%2 == 0 {
				return e.do(logical.DeleteOperation, "roles/cc-capped", nil)
			}
			return e.do(logical.UpdateOperation, "roles/cc-capped", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment", "ttl": "1h"})
		},
		func(n int) (*logical.Response, error) { // edit scopes
			scopes := []string{"connect:recommendations", "connect:recommendations,connect:post_checkout"}[n%2]
			return e.do(logical.UpdateOperation, "roles/shopper", map[string]any{"scopes": scopes})
		},
		func(int) (*logical.Response, error) { return e.do(logical.DeleteOperation, "cache/cc", nil) },
		func(int) (*logical.Response, error) { return e.do(logical.DeleteOperation, "cache/shopper", nil) },
	}
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := writers[i%len(writers)](n)
				if err != nil || resp.IsError() {
					if resp != nil && strings.Contains(fmt.Sprint(resp.Error()), "unknown role") {
						continue
					}
					fail("writer %d: %v %v", i%len(writers), err, resp.Error())
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatal(f)
	}
	t.Logf("%d reads, %d mints, %d revocations", reads.Load(), e.fake.Mints(), e.fake.Revocations())
	if reads.Load() < 100 {
		t.Fatalf("only %d reads completed", reads.Load())
	}

	// Every token handed out is one Connect issued; exclusive leases revoke.
	lost := 0
	for _, h := range handed {
		if _, ok := e.fake.Token(h.token); !ok {
			t.Fatalf("a handed-out token is unknown to Connect")
		}
		if h.secret.InternalData["token_reuse"] == reuseExclusive {
			if err := revoke(e, h.secret); err != nil {
				t.Fatalf("revoking an exclusive lease: %v", err)
			}
			if e.fake.TokenLive(h.token) {
				lost++
			}
		}
	}
	if lost != 0 {
		t.Errorf("%d exclusive tokens still live after their leases were revoked", lost)
	}

	// Storage is consistent: everything decodes and every role still serves live tokens.
	for key, value := range e.storageSnapshot() {
		if !json.Valid([]byte(value)) {
			t.Errorf("storage entry %q is not valid JSON", key)
		}
	}
	e.b = reloadBackend(t, e)
	for _, name := range []string{"cc", "cc-excl", "shopper"} {
		tok := e.mustOK(logical.ReadOperation, "creds/"+name, nil).Data["access_token"].(string)
		if !e.fake.TokenLive(tok) {
			t.Errorf("after the storm, creds/%s served a dead token", name)
		}
	}
}

// reloadBackend builds a fresh backend on the same storage, as a restart does.
func reloadBackend(t *testing.T, e *testEnv) *backend {
	t.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	conf.System = e.sys
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: e.logs, Level: hclog.Trace}) // scanned for secrets
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	return lb.(*backend)
}
