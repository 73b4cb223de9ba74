//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The token lifecycle (lifecycle.go) through a real Vault: a flushed token is
// never handed out again even while Connect cannot revoke it, and its
// revocation is retried once Connect is back; a deleted or redefined role's
// shared tokens stay valid for their leases, out of service, until
// DELETE cache/<role> revokes them; an authorization code whose answer came
// too late is never sent again, whoever retries. The operator and the
// application act through examples/policies.

// lifecycleStack is a fake, a dev Vault with the engine configured for it,
// and tokens with the shipped operator and application policies.
type lifecycleStack struct {
	f             *fake
	v             *vault
	operator, app string // Vault tokens; never printed
}

func startLifecycleStack(t *testing.T) *lifecycleStack {
	t.Helper()
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "policy", "write", "instacart-operator", filepath.Join(repoRoot, "examples/policies/operator.hcl"))
	operator := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-operator", "-field=token"))
	app := v.appToken(t)
	v.Secrets = append(v.Secrets, operator, app)
	t.Cleanup(func() { _ = f.ClearFaults() })
	return &lifecycleStack{f: f, v: v, operator: operator, app: app}
}

// call is one vault/api request as token (no client retries: each call is
// one request). It returns the status, the decoded warnings of a 2xx answer
// and the errors of a failed one; a 2xx body (it may hold a token) is
// decoded into out when out is not nil, and never returned.
func (s *lifecycleStack) call(t *testing.T, token, method, path string, body, out any) (status int, warnings, errs []string) {
	t.Helper()
	var ok struct {
		Warnings []string `json:"warnings"`
	}
	st, raw, err := s.v.CallAs(token, method, path, body, nil)
	if err != nil {
		t.Fatal(s.v.Redact(err.Error()))
	}
	if st < 300 {
		if len(raw) > 0 {
			if err := json.Unmarshal([]byte(raw), &ok); err != nil {
				t.Fatalf("%s %s: HTTP %d with an undecodable body", method, path, st)
			}
			if out != nil {
				if err := json.Unmarshal([]byte(raw), out); err != nil {
					t.Fatalf("%s %s: decoding: %v", method, path, err)
				}
			}
		}
		return st, ok.Warnings, nil
	}
	var failed struct {
		Errors []string `json:"errors"`
	}
	_ = json.Unmarshal([]byte(raw), &failed)
	return st, nil, failed.Errors
}

// readCreds is the application reading creds/<role> (a GET, or a write of
// user_id for a per-user role). It returns the status, the creds of a 200 and
// the errors otherwise.
func (s *lifecycleStack) readCreds(t *testing.T, token, role, userID string) (int, creds, []string) {
	t.Helper()
	var c creds
	method, body := http.MethodGet, any(nil)
	if userID != "" {
		method, body = http.MethodPut, map[string]string{"user_id": userID}
	}
	st, _, errs := s.call(t, token, method, "instacart/creds/"+role, body, &c)
	if st == http.StatusOK && (c.Data.AccessToken == "" || c.LeaseID == "") {
		t.Fatalf("read creds/%s: HTTP 200 without a token or a lease", role)
	}
	return st, c, errs
}

// mustCreds is readCreds that fails the test unless it answers 200.
func (s *lifecycleStack) mustCreds(t *testing.T, token, role, userID string) creds {
	t.Helper()
	st, c, errs := s.readCreds(t, token, role, userID)
	if st != http.StatusOK {
		t.Fatalf("read creds/%s: HTTP %d: %s", role, st, s.v.Redact(strings.Join(errs, "; ")))
	}
	return c
}

// flushCounts is what DELETE cache/<role> answers with.
type flushCounts struct {
	Revoked int `json:"revoked_tokens"`
	Expired int `json:"expired_tokens"`
	Refused int `json:"refused_tokens"`
	Pending int `json:"pending_tokens"`
}

type flushAnswer struct {
	Data flushCounts `json:"data"`
}

// userHash is how the engine names a user's token in warnings and errors:
// "#" and a short hash of the user id, never the id itself.
func userHash(userID string) string {
	sum := sha256.Sum256([]byte(userID))
	return "#" + hex.EncodeToString(sum[:6])
}

// TestE2EFlushWhileConnectIsDown: a flush while Connect is down answers a 502
// naming the token it could not revoke (a user's by hash only), never hands
// that token out again, and its revocation is retried by the next flush once
// Connect is back.
func TestE2EFlushWhileConnectIsDown(t *testing.T) {
	for _, tc := range []struct {
		name, user string
		role       []string
		named      string // how the 502 names the pending token
	}{
		{name: "role-wide token", role: []string{"grant_type=client_credentials", "scopes=connect:fulfillment"}, named: "the role-wide token"},
		{name: "a user's token", user: "shopper-4711", role: []string{"grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=shopper-*"},
			named: "the token of user " + userHash("shopper-4711")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startLifecycleStack(t)
			f, v := s.f, s.v
			// Quick retries: each flush tries a revocation twice.
			v.vault(t, "write", "instacart/config", "request_timeout=2s", "max_retries=1")
			v.vault(t, append([]string{"write", "instacart/roles/fulfillment"}, tc.role...)...)

			leased := s.mustCreds(t, s.app, "fulfillment", tc.user)
			flushed := leased.Data.AccessToken
			if !f.tokenInfo(t, flushed).Live {
				t.Fatal("the leased token is not live at the fake")
			}

			// Connect goes down: its token and revoke endpoints answer 503
			// to every attempt (the periodic retry included) until the
			// faults are cleared.
			f.InjectFaults(t, pathRevoke, map[string]any{"status": 503, "repeat": 1000})
			f.InjectFaults(t, pathToken, map[string]any{"status": 503, "repeat": 1000})
			before := f.Stats(t)
			st, warnings, errs := s.call(t, s.operator, http.MethodDelete, "instacart/cache/fulfillment", nil, nil)
			msg := strings.Join(errs, "; ")
			if st != http.StatusBadGateway || !strings.Contains(msg, tc.named) || !strings.Contains(msg, "no longer handed out") {
				t.Errorf("flush while Connect is down: HTTP %d (warnings %v), want a 502 naming %q as no longer handed out: %s", st, warnings, tc.named, v.Redact(msg))
			}
			t.Logf("flush while Connect is down: HTTP %d: %s", st, v.Redact(msg))
			if tc.user != "" && strings.Contains(msg, tc.user) {
				t.Error("the flush's error quotes the user id")
			}
			if got := f.Stats(t).Requests[pathRevoke] - before.Requests[pathRevoke]; got < 1 {
				t.Error("the flush never tried to revoke the token")
			}
			if info := f.tokenInfo(t, flushed); info.Revoked || !info.Live {
				t.Fatalf("the token was revoked although every revoke request failed (revoked %v, live %v)", info.Revoked, info.Live)
			}

			// The flushed token is never served again: while Connect is
			// down the read fails...
			st, c, errs := s.readCreds(t, s.app, "fulfillment", tc.user)
			if st == http.StatusOK {
				if c.Data.AccessToken == flushed {
					t.Fatal("a read after the flush handed out the flushed token")
				}
				t.Fatal("a read succeeded while Connect's token endpoint answered 503")
			}
			if st < 500 || !strings.Contains(strings.Join(errs, " "), "Connect") {
				t.Errorf("read while Connect is down: HTTP %d, want a 5xx naming Connect: %s", st, v.Redact(strings.Join(errs, "; ")))
			}

			// ...and once Connect is back it mints another, though the
			// flushed one may still wait in the revocation queue.
			check(t, f.ClearFaults())
			fresh := s.mustCreds(t, s.app, "fulfillment", tc.user)
			if fresh.Data.AccessToken == flushed {
				t.Fatal("the first read after Connect recovered handed out the flushed token")
			}
			if !f.tokenInfo(t, fresh.Data.AccessToken).Live {
				t.Error("the token minted after recovery is not live")
			}

			// A second flush retries the queue: the first token is revoked
			// at the fake (and the fresh one flushed with it).
			var second flushAnswer
			st, warnings, errs = s.call(t, s.operator, http.MethodDelete, "instacart/cache/fulfillment", nil, &second)
			// 2 revoked, or 1 if Vault's periodic retry got to the first.
			if c := second.Data; st != http.StatusOK || len(warnings) != 0 || c.Revoked < 1 || c.Revoked > 2 || c.Expired+c.Refused+c.Pending != 0 {
				t.Errorf("second flush: HTTP %d, warnings %v, counts %+v, want a 200 counting the tokens revoked: %s", st, warnings, second.Data, v.Redact(strings.Join(errs, "; ")))
			}
			for what, tok := range map[string]string{"the token flushed while Connect was down": flushed, "the token minted after recovery": fresh.Data.AccessToken} {
				if info := f.tokenInfo(t, tok); !info.Revoked {
					t.Errorf("%s is not revoked at the fake after the second flush", what)
				}
				if st := f.Users(t, tok); st != http.StatusUnauthorized {
					t.Errorf("Connect answered %d to %s, want 401", st, what)
				}
			}
			last := s.mustCreds(t, s.app, "fulfillment", tc.user)
			if last.Data.AccessToken == flushed || last.Data.AccessToken == fresh.Data.AccessToken {
				t.Error("a read after the second flush handed out a flushed token")
			}
			assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), []string{flushed, fresh.Data.AccessToken, last.Data.AccessToken})
		})
	}
}

// TestE2EDeletedRoleTokensRevoked: deleting a role, or redefining it, leaves
// its shared tokens valid for their leases, and DELETE cache/<role> (with the
// operator policy) still revokes them, for a role that no longer exists too.
func TestE2EDeletedRoleTokensRevoked(t *testing.T) {
	s := startLifecycleStack(t)
	f, v := s.f, s.v
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	v.vault(t, "write", "instacart/roles/peruser", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=shopper-*")

	type held struct {
		role, user string
		c          creds
	}
	tokens := []held{{role: "shared"}, {role: "peruser", user: "shopper-1"}, {role: "peruser", user: "shopper-2"}}
	var all []string
	for i := range tokens {
		tokens[i].c = s.mustCreds(t, v.Token, tokens[i].role, tokens[i].user)
		all = append(all, tokens[i].c.Data.AccessToken)
	}

	t.Run("delete", func(t *testing.T) {
		for _, role := range []string{"shared", "peruser"} {
			st, warnings, errs := s.call(t, s.operator, http.MethodDelete, "instacart/roles/"+role, nil, nil)
			if st >= 300 {
				t.Fatalf("operator: delete roles/%s: HTTP %d: %s", role, st, v.Redact(strings.Join(errs, "; ")))
			}
			if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, "DELETE cache/"+role) }) {
				t.Errorf("deleting roles/%s warned %q, want advice naming DELETE cache/%s", role, warnings, role)
			}
			if st, _, errs := s.readCreds(t, v.Token, role, ""); st != http.StatusBadRequest || !strings.Contains(strings.Join(errs, " "), "unknown role") {
				t.Errorf("creds/%s after the delete: HTTP %d, want a 400 naming an unknown role", role, st)
			}
		}
		// The leases and their tokens outlive the role.
		for _, h := range tokens {
			if info := f.tokenInfo(t, h.c.Data.AccessToken); !info.Live || info.Revoked {
				t.Errorf("%s/%s: the token died with its role (live %v, revoked %v)", h.role, h.user, info.Live, info.Revoked)
			}
			if st := f.Users(t, h.c.Data.AccessToken); st != http.StatusOK {
				t.Errorf("%s/%s: Connect answered %d to the token of a deleted role, want 200", h.role, h.user, st)
			}
		}
		for prefix, want := range map[string]int{"instacart/creds/shared/": 1, "instacart/creds/peruser/": 2} {
			if got := len(v.leases(t, prefix)); got != want {
				t.Errorf("%d lease(s) under %s after the role delete, want %d", got, prefix, want)
			}
		}

		// The operator flushes the deleted roles: every token is revoked
		// at the fake.
		before := f.Stats(t)
		for role, n := range map[string]int{"shared": 1, "peruser": 2} {
			var flushed flushAnswer
			st, warnings, errs := s.call(t, s.operator, http.MethodDelete, "instacart/cache/"+role, nil, &flushed)
			if st != http.StatusOK || len(warnings) != 0 || flushed.Data != (flushCounts{Revoked: n}) {
				t.Errorf("operator: flush of deleted role %s: HTTP %d, warnings %v, counts %+v, want a 200 counting %d revoked: %s", role, st, warnings, flushed.Data, n, v.Redact(strings.Join(errs, "; ")))
			}
		}
		for _, h := range tokens {
			if info := f.tokenInfo(t, h.c.Data.AccessToken); !info.Revoked {
				t.Errorf("%s/%s: the deleted role's token is not revoked after the flush", h.role, h.user)
			}
			if st := f.Users(t, h.c.Data.AccessToken); st != http.StatusUnauthorized {
				t.Errorf("%s/%s: Connect answered %d after the flush, want 401", h.role, h.user, st)
			}
		}
		after := f.Stats(t)
		if got := after.Revocations - before.Revocations; got != len(tokens) {
			t.Errorf("the flushes revoked %d token(s) at the fake, want %d", got, len(tokens))
		}
		if after.Requests[pathToken] != before.Requests[pathToken] {
			t.Errorf("flushing deleted roles sent %d token request(s)", after.Requests[pathToken]-before.Requests[pathToken])
		}

		// Nothing is left: flushing again sends nothing.
		var again flushAnswer
		st, _, errs := s.call(t, s.operator, http.MethodDelete, "instacart/cache/shared", nil, &again)
		if st != http.StatusOK || again.Data != (flushCounts{}) {
			t.Errorf("second flush of a deleted role: HTTP %d, counts %+v, want a 200 counting nothing: %s", st, again.Data, v.Redact(strings.Join(errs, "; ")))
		}
		if got := f.Stats(t).Requests[pathRevoke] - after.Requests[pathRevoke]; got != 0 {
			t.Errorf("a second flush of a deleted role sent %d revoke request(s)", got)
		}
	})

	t.Run("edit", func(t *testing.T) {
		v.vault(t, "write", "instacart/roles/edited", "grant_type=client_credentials", "scopes=connect:fulfillment")
		old := s.mustCreds(t, v.Token, "edited", "")
		all = append(all, old.Data.AccessToken)

		st, warnings, errs := s.call(t, s.operator, http.MethodPost, "instacart/roles/edited", map[string]any{"scopes": "connect:fulfillment,connect:ian"}, nil)
		if st >= 300 {
			t.Fatalf("operator: edit roles/edited: HTTP %d: %s", st, v.Redact(strings.Join(errs, "; ")))
		}
		if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, "DELETE cache/edited") }) {
			t.Errorf("changing the scopes warned %q, want advice naming DELETE cache/edited", warnings)
		}
		if st := f.Users(t, old.Data.AccessToken); st != http.StatusOK {
			t.Errorf("the previous definition's token died with the edit (%d)", st)
		}
		// The edited role serves a token with the new scopes...
		cur := s.mustCreds(t, v.Token, "edited", "")
		all = append(all, cur.Data.AccessToken)
		if cur.Data.AccessToken == old.Data.AccessToken {
			t.Fatal("the edited role handed out the previous definition's token")
		}
		if scopes := f.tokenInfo(t, cur.Data.AccessToken).Scopes; !slices.Contains(scopes, "connect:ian") {
			t.Errorf("the edited role's token has scopes %v, want connect:ian among them", scopes)
		}
		// ...and one flush revokes both.
		var flushed flushAnswer
		st, warnings, errs = s.call(t, s.operator, http.MethodDelete, "instacart/cache/edited", nil, &flushed)
		if st != http.StatusOK || len(warnings) != 0 || flushed.Data != (flushCounts{Revoked: 2}) {
			t.Errorf("operator: flush of the edited role: HTTP %d, warnings %v, counts %+v, want a 200 counting 2 revoked: %s", st, warnings, flushed.Data, v.Redact(strings.Join(errs, "; ")))
		}
		for what, tok := range map[string]string{"the previous definition's token": old.Data.AccessToken, "the current token": cur.Data.AccessToken} {
			if !f.tokenInfo(t, tok).Revoked {
				t.Errorf("%s is not revoked after the flush", what)
			}
		}
	})
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), all)
}

// attemptLog records what Vault answered each HTTP attempt a vault/api
// client made: the status, and the body of an error (a 2xx body may hold a
// token and is not kept).
type attemptLog struct {
	base http.RoundTripper
	mu   sync.Mutex
	seen []attempt
}

type attempt struct {
	status int
	errors []string
}

func (l *attemptLog) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	a := attempt{status: resp.StatusCode}
	if resp.StatusCode >= 400 {
		raw, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr != nil {
			return nil, rerr
		}
		resp.Body = io.NopCloser(bytes.NewReader(raw))
		var body struct {
			Errors []string `json:"errors"`
		}
		_ = json.Unmarshal(raw, &body)
		a.errors = body.Errors
	}
	l.mu.Lock()
	l.seen = append(l.seen, a)
	l.mu.Unlock()
	return resp, nil
}

func (l *attemptLog) attempts() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// TestE2ECodeAfter503ThenLateAnswer: Connect turns an authorization code away
// once (503), then processes it but answers after request_timeout. The
// application's write is told to get a new code (a 5xx); the Vault API
// client's own retry of that 5xx is refused with a 400 (the code was already
// sent), and Connect processed the code exactly once.
func TestE2ECodeAfter503ThenLateAnswer(t *testing.T) {
	s := startLifecycleStack(t)
	f, v := s.f, s.v
	v.vault(t, "write", "instacart/config", "request_timeout=1s", "max_retries=2")
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=authorization_code", "scopes=account_linking", "redirect_uri="+redirectURI)

	// The application's client keeps vault/api's default retries: a 5xx is
	// sent again by the client itself, as an application's would be.
	seen := &attemptLog{}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		t.Fatal(cfg.Error)
	}
	if cfg.MaxRetries < 1 {
		t.Fatalf("vault/api's default config has MaxRetries %d (VAULT_MAX_RETRIES set?); this test needs its retries", cfg.MaxRetries)
	}
	cfg.Address = v.Addr
	seen.base = cfg.HttpClient.Transport
	cfg.HttpClient.Transport = seen
	app, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	app.SetToken(s.app)

	code := f.Authorize(t, redirectURI, "linked-user")
	// First attempt: turned away unprocessed. Second: processed for real
	// (the code is spent, a token minted) but answered 5s later, well past
	// request_timeout, so the engine has given up by then.
	f.InjectFaults(t, pathToken,
		map[string]any{"status": 503},
		map[string]any{"after_handling": true, "delay_ms": 5000})
	before := f.Stats(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secret, err := app.Logical().WriteWithContext(ctx, "instacart/creds/fulfillment", map[string]any{"code": code})
	after := f.Stats(t)

	if secret != nil {
		t.Fatal("the write succeeded although Connect's answer came too late")
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("the write failed without an HTTP answer from Vault: %T", err)
	}
	attempts := seen.attempts()
	if len(attempts) != 2 {
		t.Fatalf("the client made %d attempt(s) (statuses %v), want 2: the engine's 5xx, then the client's retry", len(attempts), statuses(attempts))
	}
	first, retry := attempts[0], attempts[1]
	t.Logf("the application's client: attempt 1 HTTP %d %q; its retry HTTP %d %q", first.status, first.errors, retry.status, retry.errors)
	if first.status < 500 || !strings.Contains(strings.Join(first.errors, " "), "new code") {
		t.Errorf("first attempt: HTTP %d, want a 5xx telling to get a new code: %q", first.status, first.errors)
	}
	if retry.status != http.StatusBadRequest || !strings.Contains(strings.Join(retry.errors, " "), "already sent") {
		t.Errorf("the client's retry: HTTP %d, want a 400 saying the code was already sent: %q", retry.status, retry.errors)
	}
	if re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "already sent") {
		t.Errorf("the application saw HTTP %d %q, want the retry's 400 saying the code was already sent", re.StatusCode, re.Errors)
	}

	// Connect saw the code twice on the wire but processed it once: the
	// first request was turned away by the 503 before any handling, the
	// second minted; the client's retry never left Vault.
	if got := after.Requests[pathToken] - before.Requests[pathToken]; got != 2 {
		t.Errorf("the fake counted %d token request(s), want 2 (the 503, then the late answer)", got)
	}
	if got := after.Mints - before.Mints; got != 1 {
		t.Errorf("the fake minted %d token(s) from the code, want exactly 1", got)
	}
	// That token has no lease and never will: its answer arrived after the
	// engine gave up, so neither Vault nor the engine ever learnt it, and no
	// one can name it to revoke it. It expires by itself at Connect; this is
	// expected (the price of a single-use code whose answer was lost).
	if leases := v.leases(t, "instacart/creds/fulfillment/"); len(leases) != 0 {
		t.Errorf("the failed write left %d lease(s)", len(leases))
	}

	// Sending the code again by hand is refused the same way, and still
	// reaches no Connect.
	_, err = app.Logical().WriteWithContext(ctx, "instacart/creds/fulfillment", map[string]any{"code": code})
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest || !strings.Contains(strings.Join(re.Errors, " "), "already sent") {
		t.Errorf("the same code again: want a 400 saying it was already sent, got %s", describeAPIError(err))
	}
	if got := f.Stats(t).Requests[pathToken] - after.Requests[pathToken]; got != 0 {
		t.Errorf("the code reached Connect again (%d request(s))", got)
	}
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), nil)
	if strings.Contains(v.Log(t), code) {
		t.Error("the Vault server log holds the authorization code")
	}
}

func statuses(as []attempt) []int {
	out := make([]int, len(as))
	for i, a := range as {
		out[i] = a.status
	}
	return out
}

// describeAPIError says what a vault/api error was without its URL.
func describeAPIError(err error) string {
	var re *api.ResponseError
	switch {
	case err == nil:
		return "success"
	case errors.As(err, &re):
		return http.StatusText(re.StatusCode) + ": " + strings.Join(re.Errors, "; ")
	}
	return "a transport error"
}
