//go:build e2e

package e2e

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// The trust properties of issue 11, held through a real Vault: the stored
// client secret never leaves for another host or client id, tokens are
// revoked where they were minted, an authorization code is sent once, expiry
// counts from the answer, a deleted config still revokes, and a deadline is a
// 504. Each test runs its own Vault and fake.

const (
	pathToken  = "/v2/oauth/token"
	pathRevoke = "/v2/oauth/token/revoke"
)

// recorder is a loopback HTTP server in the test process that keeps every
// request it receives and refuses them all as Connect refuses unknown
// credentials, so nothing written against it can be saved.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recordedRequest
}

type recordedRequest struct {
	method, path string
	body         string // may hold a secret: never print it
}

func startRecorder(t *testing.T) *recorder {
	t.Helper()
	r := &recorder{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		r.mu.Lock()
		r.reqs = append(r.reqs, recordedRequest{method: req.Method, path: req.URL.Path, body: string(body)})
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"unknown client"}`)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) requests() []recordedRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedRequest(nil), r.reqs...)
}

// readConfig is `vault read instacart/config` as a map.
func readConfig(t *testing.T, v *vault) map[string]any {
	t.Helper()
	var cfg struct {
		Data map[string]any `json:"data"`
	}
	v.vaultJSON(t, &cfg, "read", "instacart/config")
	return cfg.Data
}

// TestTrustConfigCannotExfiltrateSecret: someone allowed to update config
// (the example operator policy) cannot have the stored client secret sent to
// a host or under a client id of their choosing by leaving client_secret out.
func TestTrustConfigCannotExfiltrateSecret(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	v.vault(t, "policy", "write", "instacart-operator", filepath.Join(repoRoot, "examples/policies/operator.hcl"))
	operator := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-operator", "-field=token"))
	rec := startRecorder(t)

	before := readConfig(t, v)
	if before["base_url"] != f.URL || before["client_id"] != fakeClient || before["client_secret_set"] != true {
		t.Fatalf("config before the test: %v", before)
	}
	fakeBefore := f.Stats(t)

	for _, args := range [][]string{
		{"base_url=" + rec.URL},
		{"base_url=" + rec.URL, "verify=false"},
		{"client_id=other"},
		{"client_id=other", "verify=false"},
		{"client_id=other", "base_url=" + rec.URL, "verify=false"},
	} {
		what := "vault write instacart/config " + strings.Join(args, " ")
		out, errOut, code := v.cli(t, operator, "", append([]string{"write", "instacart/config"}, args...)...)
		if code == 0 {
			t.Errorf("%s: exit 0, want a refusal", what)
			continue
		}
		// A refusal by a host that was sent the secret also names
		// client_secret ("Connect refused the client_id/client_secret"):
		// the engine's own refusal names no Connect error code.
		if !strings.Contains(errOut, "client_secret") || !strings.Contains(errOut, "Code: 400") || strings.Contains(errOut, "invalid_client") {
			t.Errorf("%s: exit %d, want a 400 naming client_secret before anything is sent:\n%s%s", what, code, out, errOut)
		}
	}

	if reqs := rec.requests(); len(reqs) != 0 {
		withSecret := 0
		for _, r := range reqs {
			if strings.Contains(r.body, f.Secret()) {
				withSecret++
			}
		}
		t.Errorf("the recording server received %d request(s), %d carrying the client secret", len(reqs), withSecret)
	}
	fakeAfter := f.Stats(t)
	if fakeAfter.Requests[pathToken] != fakeBefore.Requests[pathToken] || fakeAfter.Requests[pathRevoke] != fakeBefore.Requests[pathRevoke] {
		t.Errorf("refused writes reached the fake: token requests %d -> %d, revocations %d -> %d",
			fakeBefore.Requests[pathToken], fakeAfter.Requests[pathToken], fakeBefore.Requests[pathRevoke], fakeAfter.Requests[pathRevoke])
	}
	if after := readConfig(t, v); !reflect.DeepEqual(after, before) {
		t.Errorf("refused writes changed the config: %v, was %v", after, before)
	}

	// The recorder is reachable from Vault: a move that brings its own
	// (decoy) secret is sent there by verify, and only that secret is.
	decoy := filepath.Join(t.TempDir(), "decoy-secret")
	writeFile(t, decoy, "decoy-"+fakeClient)
	if _, errOut, code := v.cli(t, operator, "", "write", "instacart/config", "base_url="+rec.URL, "client_secret=@"+decoy); code == 0 || !strings.Contains(errOut, "invalid_client") {
		t.Errorf("a move with a decoy secret to a host that refuses it: exit %d, want a 400 naming invalid_client:\n%s", code, errOut)
	}
	reqs := rec.requests()
	if len(reqs) != 1 || reqs[0].path != pathToken || !strings.Contains(reqs[0].body, "decoy-"+fakeClient) || strings.Contains(reqs[0].body, f.Secret()) {
		paths := make([]string, len(reqs))
		for i, r := range reqs {
			paths[i] = r.method + " " + r.path
		}
		t.Errorf("the recorder saw %v; want one token request carrying the decoy secret and not the stored one", paths)
	}
	if after := readConfig(t, v); !reflect.DeepEqual(after, before) {
		t.Errorf("a rejected move changed the config: %v, was %v", after, before)
	}

	// Minting still goes to the configured host only.
	var c creds
	v.vaultJSON(t, &c, "read", "instacart/creds/shared")
	if f.Users(t, c.Data.AccessToken) != 200 {
		t.Error("the token minted after the refused writes does not work at the fake")
	}
	if n := len(rec.requests()); n != 1 {
		t.Errorf("minting sent %d more request(s) to the recording server", n-1)
	}
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), []string{c.Data.AccessToken})
}

// TestTrustFlushRevokesWhereMinted: after base_url moves to another Connect
// host, flushing a shared token minted at the first host revokes it there,
// with the credentials that minted it, and sends nothing to the new host.
func TestTrustFlushRevokesWhereMinted(t *testing.T) {
	a := startFake(t, 24*time.Hour)
	b := startFake(t, 24*time.Hour)
	// B knows the same application (client id and secret) as A.
	check(t, b.AddClient(fakeClient, a.Secret()))
	v := startDevVault(t)
	v.installPlugin(t, a)
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")

	var minted creds
	v.vaultJSON(t, &minted, "read", "instacart/creds/shared")
	tok := minted.Data.AccessToken
	if info := a.tokenInfo(t, tok); !info.Live {
		t.Fatal("the shared token is not live at A")
	}
	if _, err := b.TokenInfo(tok); err == nil {
		t.Fatal("B knows a token A minted")
	}

	v.vault(t, "write", "instacart/config", "base_url="+b.URL, "client_secret=@"+a.SecretFile())
	if cfg := readConfig(t, v); cfg["base_url"] != b.URL {
		t.Fatalf("config base_url = %v, want B", cfg["base_url"])
	}

	aBefore, bBefore := a.Stats(t), b.Stats(t)
	out := v.vault(t, "delete", "instacart/cache/shared")
	if strings.Contains(strings.ToLower(out), "warning") {
		t.Errorf("flush answered with a warning:\n%s", out)
	}
	if st := a.Users(t, tok); st != 401 {
		t.Errorf("A answered %d to the flushed token, want 401", st)
	}
	if info := a.tokenInfo(t, tok); !info.Revoked {
		t.Errorf("A does not record the flushed token as revoked: %+v", info.Revoked)
	}
	aAfter, bAfter := a.Stats(t), b.Stats(t)
	if got := aAfter.Requests[pathRevoke] - aBefore.Requests[pathRevoke]; got != 1 || aAfter.Revocations-aBefore.Revocations != 1 {
		t.Errorf("A: %d revoke request(s), %d revocation(s) during the flush; want 1 and 1", got, aAfter.Revocations-aBefore.Revocations)
	}
	if got := bAfter.Requests[pathRevoke] - bBefore.Requests[pathRevoke]; got != 0 {
		t.Errorf("B received %d revoke request(s) during the flush, want 0", got)
	}
	if bAfter.Requests[pathToken] != bBefore.Requests[pathToken] {
		t.Errorf("the flush sent %d token request(s) to B", bAfter.Requests[pathToken]-bBefore.Requests[pathToken])
	}

	// The next read mints afresh at B, the configured host.
	var fresh creds
	v.vaultJSON(t, &fresh, "read", "instacart/creds/shared")
	if fresh.Data.AccessToken == tok {
		t.Fatal("the flushed token was handed out again")
	}
	if info := b.tokenInfo(t, fresh.Data.AccessToken); !info.Live {
		t.Error("the token read after the flush is not live at B")
	}
	if _, err := a.TokenInfo(fresh.Data.AccessToken); err == nil {
		t.Error("the token read after the flush was minted at A")
	}
	assertNoSecrets(t, "Vault server log", v.Log(t), a.Secret(), []string{tok, fresh.Data.AccessToken})
}

// TestTrustAuthorizationCodeSentOnce: once a request carrying an
// authorization code may have reached Connect, the code is not sent again and
// the caller is told to get a new one; a code Connect turned away (503) is
// retried.
func TestTrustAuthorizationCodeSentOnce(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/linking", "grant_type=authorization_code", "scopes=account_linking", "redirect_uri="+redirectURI)
	t.Cleanup(func() { check(t, f.ClearFaults()) })

	t.Run("Connect spent the code, the answer was lost", func(t *testing.T) {
		code := f.Authorize(t, redirectURI, "linked-user")
		f.InjectFaults(t, pathToken, map[string]any{"after_handling": true, "reset": true})
		before := f.Stats(t)
		_, errOut, exit := v.cli(t, v.Token, "", "write", "instacart/creds/linking", "code="+code)
		after := f.Stats(t)
		if exit == 0 {
			t.Fatal("the write succeeded although the answer was lost")
		}
		if !strings.Contains(errOut, "new code") || !strings.Contains(errOut, "Code: 502") {
			t.Errorf("exit %d, want a 502 telling to get a new code:\n%s", exit, errOut)
		}
		if got := after.Requests[pathToken] - before.Requests[pathToken]; got != 1 {
			t.Errorf("the fake counted %d token requests for the write, want exactly 1", got)
		}
		if got := after.Mints - before.Mints; got != 1 {
			t.Errorf("the fake minted %d tokens, want 1 (the one whose answer was lost)", got)
		}
		if leases := v.leases(t, "instacart/creds/linking/"); len(leases) != 0 {
			t.Errorf("a failed write left %d lease(s)", len(leases))
		}

		// Sending it again (a client's retry, a replay) is refused by the
		// engine, and Connect never sees the code a second time.
		before = f.Stats(t)
		_, errOut, exit = v.cli(t, v.Token, "", "write", "instacart/creds/linking", "code="+code)
		if exit == 0 || !strings.Contains(errOut, "already sent") || !strings.Contains(errOut, "Code: 400") {
			t.Errorf("the same code again: exit %d, want a 400 saying it was already sent:\n%s", exit, errOut)
		}
		if got := f.Stats(t).Requests[pathToken] - before.Requests[pathToken]; got != 0 {
			t.Errorf("the code reached Connect again (%d requests)", got)
		}
	})

	t.Run("Connect turned the code away with a 503", func(t *testing.T) {
		code := f.Authorize(t, redirectURI, "linked-user-2")
		f.InjectFaults(t, pathToken, map[string]any{"status": 503})
		before := f.Stats(t)
		var c creds
		v.vaultJSON(t, &c, "write", "instacart/creds/linking", "code="+code)
		after := f.Stats(t)
		if got := after.Requests[pathToken] - before.Requests[pathToken]; got != 2 {
			t.Errorf("the fake counted %d token requests, want 2 (the 503, then the retry)", got)
		}
		if f.tokenInfo(t, c.Data.AccessToken).UserID != "linked-user-2" {
			t.Error("the token is not the linked user's")
		}
		if st := f.Users(t, c.Data.AccessToken); st != 200 {
			t.Errorf("Connect answered %d to the token", st)
		}
	})

	t.Run("Connect took the code and never answered", func(t *testing.T) {
		// Retries stay enabled (max_retries defaults to 3): the code
		// reached Connect, so none is used.
		v.vault(t, "write", "instacart/config", "request_timeout=1s")
		defer v.vault(t, "write", "instacart/config", "request_timeout=10s")
		code := f.Authorize(t, redirectURI, "linked-user-3")
		f.InjectFaults(t, pathToken, map[string]any{"hang": true})
		before := f.Stats(t)
		_, errOut, exit := v.cli(t, v.Token, "", "write", "instacart/creds/linking", "code="+code)
		after := f.Stats(t)
		if exit == 0 || !strings.Contains(errOut, "new code") || !strings.Contains(errOut, "Code: 504") {
			t.Errorf("exit %d, want a 504 telling to get a new code:\n%s", exit, errOut)
		}
		if got := after.Requests[pathToken] - before.Requests[pathToken]; got != 1 {
			t.Errorf("the fake counted %d token requests for the write, want exactly 1", got)
		}
	})
}

// TestTrustExpiresInCountsFromArrival: a Connect that reports a created_at far
// in the past (a reused token, or a skewed clock) does not shorten the lease:
// expires_in counts from when the answer arrived.
func TestTrustExpiresInCountsFromArrival(t *testing.T) {
	const (
		skew     = -50000 * time.Second
		lifetime = 36400 * time.Second
	)
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	v.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")

	f.SetClockSkew(t, skew)
	f.SetLifetime(t, lifetime)
	t.Cleanup(func() {
		f.SetClockSkew(t, 0)
		f.SetLifetime(t, 24*time.Hour)
	})
	v.vault(t, "delete", "instacart/cache/shared")

	for _, role := range []string{"shared", "excl"} {
		t.Run(role, func(t *testing.T) {
			var c creds
			v.vaultJSON(t, &c, "read", "instacart/creds/"+role)
			if c.LeaseDuration != 36400 && c.LeaseDuration != 36399 {
				t.Errorf("lease_duration = %d, want 36400 (expires_in from arrival)", c.LeaseDuration)
			}
			if d := time.Until(c.expiresAt(t)) - lifetime; d > 5*time.Second || d < -5*time.Second {
				t.Errorf("expires_at is %v from now, want %v", time.Until(c.expiresAt(t)).Round(time.Second), lifetime)
			}
			created, err := time.Parse(time.RFC3339, c.Data.CreatedAt)
			if err != nil {
				t.Fatalf("created_at %q: %v", c.Data.CreatedAt, err)
			}
			if d := time.Since(created) + skew; d > 5*time.Second || d < -5*time.Second {
				t.Errorf("created_at is %v ago, want about %v", time.Since(created).Round(time.Second), -skew)
			}
			if st := f.Users(t, c.Data.AccessToken); st != 200 {
				t.Errorf("Connect answered %d to the token", st)
			}
			if role == "shared" {
				// Its life left is judged from arrival too: the next read
				// reuses it rather than minting again.
				mints := f.Mints(t)
				var again creds
				v.vaultJSON(t, &again, "read", "instacart/creds/shared")
				if again.Data.AccessToken != c.Data.AccessToken || f.Mints(t) != mints {
					t.Errorf("the second read was not served from the cache (%d new mints)", f.Mints(t)-mints)
				}
			}
		})
	}

	// Back to a straight clock: created_at is now again, and the lease the
	// fake's lifetime.
	f.SetClockSkew(t, 0)
	f.SetLifetime(t, 24*time.Hour)
	var c creds
	v.vaultJSON(t, &c, "read", "instacart/creds/excl")
	created, err := time.Parse(time.RFC3339, c.Data.CreatedAt)
	if err != nil || time.Since(created) > 5*time.Second || c.LeaseDuration < 86399 {
		t.Errorf("after the reset: created_at %q (%v), lease_duration %d; want now and 86400", c.Data.CreatedAt, err, c.LeaseDuration)
	}
}

// TestTrustConfigDeleteStillRevokes: deleting the config does not strand the
// exclusive tokens its credentials minted: revoking their leases still
// revokes them at Connect.
func TestTrustConfigDeleteStillRevokes(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")

	var c creds
	v.vaultJSON(t, &c, "read", "instacart/creds/excl")
	v.vault(t, "delete", "instacart/config")
	if st := f.Users(t, c.Data.AccessToken); st != 200 {
		t.Fatalf("deleting the config killed the token (%d): the lease revocation below would prove nothing", st)
	}

	before := f.Stats(t)
	v.vault(t, "lease", "revoke", "-sync", c.LeaseID)
	if st := f.Users(t, c.Data.AccessToken); st != 401 {
		t.Errorf("the token of a revoked lease still works after the config was deleted (%d)", st)
	}
	after := f.Stats(t)
	if after.Requests[pathRevoke]-before.Requests[pathRevoke] != 1 || after.Revocations-before.Revocations != 1 {
		t.Errorf("revoke requests %d, revocations %d at the fake; want 1 and 1",
			after.Requests[pathRevoke]-before.Requests[pathRevoke], after.Revocations-before.Revocations)
	}
	if left := v.leases(t, "instacart/creds/excl/"); len(left) != 0 {
		t.Errorf("%d lease(s) left after revoke", len(left))
	}

	// The config reads as absent...
	out, errOut, code := v.cli(t, v.Token, "", "read", "instacart/config")
	if code == 0 || strings.Contains(out, "client_id") || !strings.Contains(errOut, "No value found") {
		t.Errorf("vault read instacart/config after delete: exit %d, want no value:\n%s%s", code, out, errOut)
	}
	if st, _ := v.api(t, http.MethodGet, "instacart/config", nil, nil); st != http.StatusNotFound {
		t.Errorf("GET instacart/config after delete: HTTP %d, want 404", st)
	}
	// ...and creds say it is not configured, without asking Connect.
	_, errOut, code = v.cli(t, v.Token, "", "read", "instacart/creds/excl")
	if code == 0 || !strings.Contains(errOut, "not configured") || !strings.Contains(errOut, "Code: 400") {
		t.Errorf("creds after config delete: exit %d, want a 400 saying not configured:\n%s", code, errOut)
	}
	if got := f.Stats(t).Requests[pathToken] - after.Requests[pathToken]; got != 0 {
		t.Errorf("creds after config delete sent %d token request(s)", got)
	}
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), []string{c.Data.AccessToken})
}

// TestTrustDeadlineIs504: a Connect that never answers within
// request_timeout is a 504 Gateway Timeout through Vault's HTTP API.
func TestTrustDeadlineIs504(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/config", "request_timeout=1s", "max_retries=0")
	v.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	t.Cleanup(func() { check(t, f.ClearFaults()) })

	for _, role := range []string{"excl", "shared"} {
		t.Run(role, func(t *testing.T) {
			f.InjectFaults(t, pathToken, map[string]any{"hang": true})
			before := f.Stats(t).Requests[pathToken]
			start := time.Now()
			st, raw := v.api(t, http.MethodGet, "instacart/creds/"+role, nil, nil)
			elapsed := time.Since(start)
			if st != http.StatusGatewayTimeout {
				body := "(not shown: may hold a token)"
				if st >= 400 {
					body = v.Redact(raw)
				}
				t.Errorf("HTTP %d, want 504: %s", st, body)
			}
			if elapsed > 10*time.Second {
				t.Errorf("answered after %v; request_timeout is 1s with no retries", elapsed)
			}
			if got := f.Stats(t).Requests[pathToken] - before; got != 1 {
				t.Errorf("%d token requests, want 1 (max_retries=0)", got)
			}
		})
	}
}
