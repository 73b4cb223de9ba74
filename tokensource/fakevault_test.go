package tokensource

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

const (
	credsPath = "instacart/creds/fulfillment"
	appToken  = "app-vault-token"
)

// clock is a settable time source shared by the fake Vault and the Source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

// newClock starts at the current second (oauth2.Token.Valid uses the real clock).
func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeVault speaks the part of Vault's HTTP API a Source uses, as the shipped
// app policy (examples/policies/app.hcl) lets it: the engine's creds path
// (GET, or PUT with a user id or a code), and PUT sys/leases/renew/<lease_id>
// and sys/leases/revoke/<lease_id> for leases under the creds path, with the
// lease id in the URL only (the policy denies a lease_id parameter). Each
// creds call mints a new token "tok-N" with lease "instacart/creds/fulfillment/lease-N".
// Renewals work like the engine's: the lease is extended by leaseCap (or to
// the token's expiry), never past the token's expiry or issue time + maxTTL.
type fakeVault struct {
	t     *testing.T
	clock *clock
	srv   *httptest.Server

	mu         sync.Mutex
	life       time.Duration // token life
	leaseCap   time.Duration // lease_duration cap (the role's ttl); 0: the token's life
	maxTTL     time.Duration // a lease's end is at most its issue time + maxTTL; 0: the token's life
	notRenew   bool          // leases are not renewable
	calls      int           // creds calls (reads and writes)
	renews     int           // renewal calls
	methods    []string
	bodies     []map[string]any
	replaces   []string // each creds call's replacesHeader ("" without)
	events     []string // "creds" and "revoke <lease id>", in order
	revoked    []string
	revokeBody []map[string]any
	renewBody  []map[string]any
	leases     map[string]*fakeLease
	codes      map[string]bool // codes sent
	failCreds  []int           // statuses to answer the next creds calls with
	failRenew  []int           // statuses to answer the next renewals with
	failRevoke int             // status to answer revocations with
	gate       chan struct{}
	arrived    chan struct{} // a creds call reached the gate
	revokedCh  chan string   // each revoked lease id, if set
	renewedCh  chan string   // each renewed lease id, if set
	mutate     func(data map[string]any, sec map[string]any)
}

type fakeLease struct {
	issued, tokenExpiry, end time.Time
	revoked                  bool
}

func newFakeVault(t *testing.T, c *clock, life time.Duration) *fakeVault {
	t.Helper()
	fv := &fakeVault{t: t, clock: c, life: life, leases: map[string]*fakeLease{}, codes: map[string]bool{}}
	fv.srv = httptest.NewServer(http.HandlerFunc(fv.serve))
	t.Cleanup(fv.srv.Close)
	return fv
}

func vaultError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{msg}})
}

func (fv *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Vault-Token") != appToken {
		vaultError(w, http.StatusForbidden, "permission denied")
		return
	}
	const renew, revoke = "/v1/sys/leases/renew/", "/v1/sys/leases/revoke/"
	switch {
	case r.URL.Path == "/v1/"+credsPath:
		fv.creds(w, r)
	case strings.HasPrefix(r.URL.Path, renew) && r.Method == http.MethodPut:
		fv.renew(w, r, strings.TrimPrefix(r.URL.Path, renew))
	case strings.HasPrefix(r.URL.Path, revoke) && r.Method == http.MethodPut:
		fv.revoke(w, r, strings.TrimPrefix(r.URL.Path, revoke))
	default: // the body forms (sys/leases/revoke, sys/leases/renew) included: not in the policy
		vaultError(w, http.StatusForbidden, "permission denied")
	}
}

// leaseBody decodes a lease call's body; a lease_id in it is denied, as the
// shipped policy's denied_parameters do.
func leaseBody(w http.ResponseWriter, r *http.Request) (map[string]any, bool) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	if _, ok := body["lease_id"]; ok {
		vaultError(w, http.StatusForbidden, "permission denied")
		return nil, false
	}
	return body, true
}

func (fv *fakeVault) renew(w http.ResponseWriter, r *http.Request, id string) {
	if !strings.HasPrefix(id, credsPath+"/") {
		vaultError(w, http.StatusForbidden, "permission denied")
		return
	}
	body, ok := leaseBody(w, r)
	if !ok {
		return
	}
	now := fv.clock.Now()
	fv.mu.Lock()
	fv.renews++
	fv.renewBody = append(fv.renewBody, body)
	var fail int
	if len(fv.failRenew) > 0 {
		fail, fv.failRenew = fv.failRenew[0], fv.failRenew[1:]
	}
	l := fv.leases[id]
	leaseCap, maxTTL, ch := fv.leaseCap, fv.maxTTL, fv.renewedCh
	var ttl time.Duration
	if fail == 0 && l != nil && !l.revoked && now.Before(l.end) && !fv.notRenew {
		end := l.tokenExpiry
		if leaseCap > 0 && now.Add(leaseCap).Before(end) {
			end = now.Add(leaseCap)
		}
		if maxTTL > 0 && l.issued.Add(maxTTL).Before(end) {
			end = l.issued.Add(maxTTL)
		}
		l.end = end
		ttl = end.Sub(now)
	}
	fv.mu.Unlock()
	switch {
	case fail != 0:
		vaultError(w, fail, fmt.Sprintf("injected failure %d", fail))
		return
	case ttl <= 0:
		vaultError(w, http.StatusBadRequest, "lease not found or lease is not renewable")
		return
	}
	if ch != nil {
		ch <- id
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"lease_id": id, "lease_duration": int(ttl / time.Second), "renewable": true})
}

func (fv *fakeVault) revoke(w http.ResponseWriter, r *http.Request, id string) {
	if !strings.HasPrefix(id, credsPath+"/") {
		vaultError(w, http.StatusForbidden, "permission denied")
		return
	}
	body, ok := leaseBody(w, r)
	if !ok {
		return
	}
	fv.mu.Lock()
	status := fv.failRevoke
	ch := fv.revokedCh
	fv.events = append(fv.events, "revoke "+id)
	if status == 0 {
		fv.revoked = append(fv.revoked, id)
		fv.revokeBody = append(fv.revokeBody, body)
		if l := fv.leases[id]; l != nil {
			l.revoked = true
		}
	}
	fv.mu.Unlock()
	if status != 0 {
		vaultError(w, status, "permission denied")
		return
	}
	if ch != nil {
		ch <- id
	}
	w.WriteHeader(http.StatusNoContent)
}

func (fv *fakeVault) creds(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if r.Method != http.MethodGet {
		_ = json.NewDecoder(r.Body).Decode(&body)
	}
	fv.mu.Lock()
	fv.calls++
	n := fv.calls
	fv.methods = append(fv.methods, r.Method)
	fv.bodies = append(fv.bodies, body)
	fv.replaces = append(fv.replaces, r.Header.Get(replacesHeader))
	fv.events = append(fv.events, "creds")
	gate, arrived := fv.gate, fv.arrived
	var fail int
	if len(fv.failCreds) > 0 {
		fail, fv.failCreds = fv.failCreds[0], fv.failCreds[1:]
	}
	code, _ := body["code"].(string)
	if code != "" && fail == 0 {
		if fv.codes[code] {
			fail = -1
		}
		fv.codes[code] = true
	}
	life, leaseCap, mutate, notRenew := fv.life, fv.leaseCap, fv.mutate, fv.notRenew
	fv.mu.Unlock()
	if gate != nil {
		if arrived != nil {
			arrived <- struct{}{}
		}
		<-gate
	}
	switch {
	case fail == -1:
		vaultError(w, http.StatusBadRequest, "code: this authorization code was already sent to Connect, and codes are single-use: get a new one from Instacart")
		return
	case fail != 0:
		vaultError(w, fail, fmt.Sprintf("injected failure %d", fail))
		return
	}
	now := fv.clock.Now()
	leaseTTL := life
	if leaseCap > 0 && leaseCap < life {
		leaseTTL = leaseCap
	}
	data := map[string]any{
		"access_token": fmt.Sprintf("tok-%d", n),
		"token_type":   "Bearer",
		"scopes":       []string{"connect:fulfillment"},
		"expires_at":   now.Add(life).Format(time.RFC3339),
		"created_at":   now.Format(time.RFC3339),
	}
	if id, ok := body["user_id"].(string); ok {
		data["user_id"] = id
	}
	leaseID := fmt.Sprintf("%s/lease-%d", credsPath, n)
	sec := map[string]any{
		"request_id":     fmt.Sprintf("req-%d", n),
		"lease_id":       leaseID,
		"lease_duration": int(leaseTTL / time.Second),
		"renewable":      !notRenew,
		"data":           data,
	}
	if mutate != nil {
		mutate(data, sec)
	}
	fv.mu.Lock()
	fv.leases[leaseID] = &fakeLease{issued: now, tokenExpiry: now.Add(life), end: now.Add(leaseTTL)}
	fv.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(sec)
}

func (fv *fakeVault) Calls() int {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	return fv.calls
}

func (fv *fakeVault) Renews() int {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	return fv.renews
}

func (fv *fakeVault) Revoked() []string {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	return append([]string(nil), fv.revoked...)
}

// Events is the creds calls and revocations so far, in order.
func (fv *fakeVault) Events() []string {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	return append([]string(nil), fv.events...)
}

// Replaces is each creds call's replacesHeader.
func (fv *fakeVault) Replaces() []string {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	return append([]string(nil), fv.replaces...)
}

func (fv *fakeVault) set(f func(fv *fakeVault)) {
	fv.mu.Lock()
	f(fv)
	fv.mu.Unlock()
}

func vaultClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(appToken)
	return c
}

// onFakeClock runs a Source (or a Pool's Sources) on the fake clock.
func onFakeClock(c *clock) Option { return func(s *Source) { s.now = c.Now } }

// newSource is a Source for the fake Vault on the fake clock.
func newSource(t *testing.T, fv *fakeVault, opts ...Option) *Source {
	t.Helper()
	opts = append(opts, onFakeClock(fv.clock))
	s, err := New(vaultClient(t, fv.srv.URL), credsPath, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// mustToken calls Token and wants the token named want.
func mustToken(t *testing.T, s *Source, want string) *oauth2.Token {
	t.Helper()
	tok, err := s.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if tok.AccessToken != want {
		t.Fatalf("Token = %s, want %s", tok.AccessToken, want)
	}
	return tok
}

func wantCalls(t *testing.T, fv *fakeVault, want int) {
	t.Helper()
	if got := fv.Calls(); got != want {
		t.Fatalf("%d creds calls to Vault, want %d", got, want)
	}
}
