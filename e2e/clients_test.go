//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// The client tests run the examples under examples/app-go and
// examples/app-node, as committed, against a dev Vault and the Connect fake
// whose tokens live clientLifetime. Each run spreads its calls over
// clientRun, a little more than one token life and less than the second
// token's early re-read, so a client that reads once per token life makes
// exactly two Vault reads: one at the start and one shortly before the first
// token expires.
const (
	clientLifetime = 24 * time.Second
	clientRun      = 30 * time.Second
	clientRole     = "fulfillment"
	clientPath     = "instacart/creds/" + clientRole
)

// clientStack is a dev Vault with the plugin, a role named clientRole, a
// file audit device, the fake minting tokens of a given life, and a Vault
// token for the app with examples/policies/app.hcl as shipped (read the
// role's creds, renew and revoke its leases) and nothing more.
type clientStack struct {
	f        *fake
	v        *vault
	appToken string
	audit    string // the audit log's path
	before   stack.FakeStats
}

// startClientStack is the examples' stack: a client_credentials role and
// clientLifetime tokens.
func startClientStack(t *testing.T) *clientStack {
	t.Helper()
	return startClientStackWith(t, clientLifetime, "grant_type=client_credentials", "scopes=connect:fulfillment")
}

// startClientStackWith writes the role with roleArgs and has the fake mint
// tokens that live lifetime.
func startClientStackWith(t *testing.T, lifetime time.Duration, roleArgs ...string) *clientStack {
	t.Helper()
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	audit := filepath.Join(t.TempDir(), "audit.log")
	v.vault(t, "audit", "enable", "file", "file_path="+audit)
	v.vault(t, append([]string{"write", "instacart/roles/" + clientRole}, roleArgs...)...)
	f.SetLifetime(t, lifetime)
	app := v.appToken(t) // examples/policies/app.hcl, unmodified
	v.Secrets = append(v.Secrets, app)
	return &clientStack{f: f, v: v, appToken: app, audit: audit, before: f.Stats(t)}
}

// clientRunResult is what one run of an example caused.
type clientRunResult struct {
	output      string
	leases      int // distinct leases under clientPath seen while it ran
	leasesAfter int // leases left once it exited
	audited     int // creds responses with a lease in the audit log
	mints       int // tokens the fake minted
	users       int // calls to the fake's users endpoint
	revocations int // upstream revocations at the fake
	took        time.Duration
}

// run runs an example program with the app's Vault token and the fake's URL
// in its environment, watching the role's leases while it runs.
func (s *clientStack) run(t *testing.T, dir string, name string, args ...string) clientRunResult {
	t.Helper()
	return s.runWith(t, []string{"VAULT_ADDR=" + s.v.Addr, "VAULT_TOKEN=" + s.appToken}, nil, dir, name, args...)
}

// runWith is run with vaultEnv (the VAULT_* variables; those of the test's
// own environment are left out), calling during, if given, while the
// program runs.
func (s *clientStack) runWith(t *testing.T, vaultEnv []string, during func(), dir string, name string, args ...string) clientRunResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, vaultEnv...), "CONNECT_URL="+s.f.URL)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output

	w := watchLeases(s.v, clientPath+"/")
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		if during != nil {
			during()
		}
		err = cmd.Wait()
	}
	took := time.Since(start)
	out := output.Bytes()
	seen, werr := w.stop()
	if werr != nil {
		t.Fatal(werr)
	}
	t.Logf("%s (%v):\n%s", filepath.Base(name), took.Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatalf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), err)
	}
	after := s.f.Stats(t)
	return clientRunResult{
		output:      string(out),
		leases:      len(seen),
		leasesAfter: len(s.v.leases(t, clientPath+"/")),
		audited:     auditedLeases(t, s.audit, clientPath),
		mints:       after.Mints - s.before.Mints,
		users:       after.Requests["/v2/fulfillment/users"] - s.before.Requests["/v2/fulfillment/users"],
		revocations: after.Revocations - s.before.Revocations,
		took:        took,
	}
}

// check asserts what reading once per token life means for a run of calls:
// every call worked, two leases and two mints for a run of a little more than
// one token life, no upstream revocation (the role's token is shared), the
// leases revoked on exit, and no token or secret in the output.
func (s *clientStack) check(t *testing.T, r clientRunResult, calls int) {
	t.Helper()
	t.Logf("%d calls over %v: %d leases (audit log: %d), %d mints, %d upstream revocations, %d leases left",
		r.users, r.took.Round(100*time.Millisecond), r.leases, r.audited, r.mints, r.revocations, r.leasesAfter)
	if r.users != calls {
		t.Errorf("the fake's users endpoint saw %d calls, want %d", r.users, calls)
	}
	if r.took <= clientLifetime {
		t.Errorf("the run took %v, not more than one token life (%v)", r.took, clientLifetime)
	}
	const lives = 2 // the first token's life and the start of the second's
	if r.leases != lives || r.audited != lives {
		t.Errorf("%d Vault leases seen (%d creds reads in the audit log), want %d: one per token life (run took %v)",
			r.leases, r.audited, lives, r.took)
	}
	if r.mints != lives {
		t.Errorf("%d tokens minted at Connect, want %d: one per token life", r.mints, lives)
	}
	if r.revocations != 0 {
		t.Errorf("%d upstream revocations: revoking a shared token's lease must not revoke it", r.revocations)
	}
	if r.leasesAfter != 0 {
		t.Errorf("%d leases left after the app exited, want 0: it revokes them", r.leasesAfter)
	}
	if tok := tokenShape.FindString(r.output); tok != "" {
		t.Errorf("the app printed something shaped like an access token")
	}
	assertNoSecrets(t, "app output", r.output, s.f.Secret(), nil)
}

// tokenShape matches the fake's access tokens: 43 characters of URL-safe base64.
var tokenShape = regexp.MustCompile(`(^|[^A-Za-z0-9_-])[A-Za-z0-9_-]{43}([^A-Za-z0-9_-]|$)`)

// leftAtChange finds the example's "the previous one had Ns left" lines and
// checks that each token was replaced before it expired and near its expiry
// (in the last half of its life), not early.
func leftAtChange(t *testing.T, output string, re *regexp.Regexp) {
	t.Helper()
	m := re.FindAllStringSubmatch(output, -1)
	if len(m) != 1 {
		t.Fatalf("the app reported %d token changes, want 1:\n%s", len(m), output)
	}
	left, err := strconv.ParseFloat(m[0][1], 64)
	if err != nil {
		t.Fatal(err)
	}
	if left <= 0 || left > (clientLifetime/2).Seconds() {
		t.Errorf("the token changed with %.1fs of its %v life left, want more than 0 and at most half", left, clientLifetime)
	}
}

// TestClientGoTokenSource builds examples/app-go and runs it: 10,000 calls to
// the fake's users endpoint over a little more than one token life, through
// tokensource.
func TestClientGoTokenSource(t *testing.T) {
	t.Parallel()
	s := startClientStack(t)
	bin := filepath.Join(t.TempDir(), "app-go")
	if err := stack.GoBuild(context.Background(), filepath.Join(repoRoot, "examples", "app-go"), bin, ".", ""); err != nil {
		t.Fatal(err)
	}
	const calls = 10000
	r := s.run(t, repoRoot, bin, clientPath, strconv.Itoa(calls), clientRun.String())
	want := fmt.Sprintf("calls: %d, tokens: 2, statuses: map[200 OK:%d]", calls, calls)
	if !strings.Contains(r.output, want) {
		t.Errorf("the app did not report %q", want)
	}
	leftAtChange(t, r.output, regexp.MustCompile(`token \d+: the previous one had (-?[\d.]+)s left`))
	s.check(t, r, calls)
}

// TestClientNodeVault runs examples/app-node with node-vault (see
// nodeExample): 300 calls over a little more than one token life.
func TestClientNodeVault(t *testing.T) {
	t.Parallel()
	dir := nodeExample(t)
	s := startClientStack(t)
	const calls = 300
	r := s.run(t, dir, "node", "app.js", clientPath, strconv.Itoa(calls), strconv.Itoa(int(clientRun/time.Second)))
	want := fmt.Sprintf(`calls: %d, vault reads: 2, tokens: 2, statuses: {"200":%d}`, calls, calls)
	if !strings.Contains(r.output, want) {
		t.Errorf("the app did not report %q", want)
	}
	leftAtChange(t, r.output, regexp.MustCompile(`read \d+: the previous token had (-?[\d.]+)s left`))
	s.check(t, r, calls)
}

// TestClientNodeVaultCappedLease runs examples/app-node against an exclusive
// role whose ttl (8 s) caps each lease well below the token's 24-second life.
// When a lease ends Vault revokes it, and the engine revokes its exclusive
// token at Connect, so the app must replace its token before the lease ends,
// not before expires_at: every call succeeds, with a read about every 6 s.
func TestClientNodeVaultCappedLease(t *testing.T) {
	t.Parallel()
	dir := nodeExample(t)
	s := startClientStackWith(t, clientLifetime,
		"grant_type=client_credentials", "scopes=connect:fulfillment", "token_reuse=exclusive", "ttl=8s")
	const calls, over = 200, 20
	r := s.run(t, dir, "node", "app.js", clientPath, strconv.Itoa(calls), strconv.Itoa(over))
	t.Logf("%d calls: %d leases (audit log: %d), %d mints, %d upstream revocations, %d leases left",
		r.users, r.leases, r.audited, r.mints, r.revocations, r.leasesAfter)
	if want := fmt.Sprintf(`statuses: {"200":%d}`, calls); !strings.Contains(r.output, want) {
		t.Errorf("the app did not report %q: it used a token whose lease had ended", want)
	}
	// A read when each 8-second lease has 2 s left: at 0, 6, 12 and 18 s.
	if r.audited < 3 || r.audited > 5 || r.mints != r.audited {
		t.Errorf("%d leases and %d mints over %d s of 8-second leases, want 3 to 5 of each", r.audited, r.mints, over)
	}
	if r.leasesAfter != 0 {
		t.Errorf("%d leases left after the app exited, want 0", r.leasesAfter)
	}
	assertNoSecrets(t, "app output", r.output, s.f.Secret(), nil)
}

// nodeExample copies examples/app-node into a temporary directory and
// installs node-vault there with `npm ci` from the committed
// package-lock.json. Without Node >= 18 and npm the test is skipped (make
// test says so in its summary); E2E_REQUIRE_NODE=1 makes that a failure.
func nodeExample(t *testing.T) string {
	t.Helper()
	if why := nodeMissing(); why != "" {
		if os.Getenv("E2E_REQUIRE_NODE") != "" {
			t.Fatalf("Node >= 18 and npm are required (E2E_REQUIRE_NODE is set): %s", why)
		}
		t.Skipf("Node >= 18 and npm are needed for the node-vault example (examples/app-node): %s; skipped", why)
	}
	dir := t.TempDir()
	src := filepath.Join(repoRoot, "examples", "app-node")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() { // everything but node_modules
			writeFile(t, filepath.Join(dir, e.Name()), readFileString(t, filepath.Join(src, e.Name())))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	npm := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	npm.Dir = dir
	if out, err := npm.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal([]byte(readFileString(t, filepath.Join(dir, "node_modules/node-vault/package.json"))), &pkg); err != nil || pkg.Version != "0.12.0" {
		t.Fatalf("npm ci installed node-vault %q (%v), want 0.12.0", pkg.Version, err)
	}
	return dir
}

// nodeMissing says why Node >= 18 with npm cannot run, or "" if it can.
func nodeMissing() string {
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		return "node not found"
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if major < 18 {
		return "node is " + strings.TrimSpace(string(out))
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return "npm not found"
	}
	return ""
}

// buildTSClient builds e2e/tsclient, the suite's driver of tokensource
// features the examples do not use.
func buildTSClient(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tsclient")
	if err := stack.GoBuild(context.Background(), filepath.Join(repoRoot, "e2e", "tsclient"), bin, ".", ""); err != nil {
		t.Fatal(err)
	}
	return bin
}

// outputValue is the value of the "key: value" line of a tsclient run.
func outputValue(t *testing.T, output, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `: (.*)$`).FindStringSubmatch(output)
	if m == nil {
		t.Fatalf("no %q line in the output", key)
	}
	return strings.TrimSpace(m[1])
}

// TestClientTokenSourceRenewsCappedLease: an exclusive role whose ttl (8 s)
// caps the lease well below the token's 40 s life. tokensource renews the
// lease (PUT sys/leases/renew/<lease_id>, under the shipped app policy)
// instead of reading a new token per cap, so one token serves a 20-second
// run: one lease, one mint, three renewals, every call 200, and the lease,
// with the exclusive token, revoked on Close. Reading anew per cap would
// have made four leases and four tokens.
func TestClientTokenSourceRenewsCappedLease(t *testing.T) {
	t.Parallel()
	bin := buildTSClient(t)
	s := startClientStackWith(t, 40*time.Second,
		"grant_type=client_credentials", "scopes=connect:fulfillment", "token_reuse=exclusive", "ttl=8s")
	r := s.run(t, repoRoot, bin, "renew", clientPath, "20s")
	renewals := auditedRenewals(t, s.audit, clientPath+"/")
	t.Logf("%d calls: %d leases (audit log: %d), %d renewals, %d mints, %d upstream revocations, %d leases left",
		r.users, r.leases, r.audited, renewals, r.mints, r.revocations, r.leasesAfter)
	if got := outputValue(t, r.output, "tokens"); got != "1" {
		t.Errorf("the run used %s tokens, want 1", got)
	}
	if got := outputValue(t, r.output, "hook errors"); got != "0" {
		t.Errorf("%s errors reached the error hook, want 0", got)
	}
	if n, _ := strconv.Atoi(outputValue(t, r.output, "expiries")); n < 3 {
		t.Errorf("the token's Expiry moved %d times, want at least 3 (one per renewal)", n-1)
	}
	if want := fmt.Sprintf("map[200 OK:%d]", r.users); outputValue(t, r.output, "statuses") != want || r.users < 150 {
		t.Errorf("statuses %s over %d calls, want all 200 (and about 200 calls)", outputValue(t, r.output, "statuses"), r.users)
	}
	if r.audited != 1 || r.mints != 1 {
		t.Errorf("%d creds reads, %d mints, want 1 and 1: the capped lease is renewed, not replaced", r.audited, r.mints)
	}
	if renewals < 2 || renewals > 3 {
		t.Errorf("%d lease renewals in 20 s of 8-second leases, want 2 or 3 (one every 6 s)", renewals)
	}
	if r.leasesAfter != 0 {
		t.Errorf("%d leases left after Close, want 0", r.leasesAfter)
	}
	waitFor(t, 30*time.Second, "the exclusive token's revocation at Connect", func() bool {
		return s.f.Stats(t).Revocations-s.before.Revocations == 1
	})
	assertNoSecrets(t, "tsclient output", r.output, s.f.Secret(), nil)
}

// TestClientTokenSourcePoolRevokesOnClose: a Pool of two Sources for an
// assertion role with allowed_user_ids, under the shipped app policy: users
// store-1, store-2 and store-3 evict store-1, whose lease is revoked in the
// background; store-1's return evicts store-2 likewise; Close revokes the
// rest. Four leases, three mints (the engine still holds store-1's shared
// token), no upstream revocation (the tokens are shared), none left.
func TestClientTokenSourcePoolRevokesOnClose(t *testing.T) {
	t.Parallel()
	bin := buildTSClient(t)
	s := startClientStackWith(t, time.Hour,
		"grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=store-*")
	r := s.run(t, repoRoot, bin, "pool", clientPath)
	t.Logf("%d leases (audit log), %d mints, %d upstream revocations, %d leases left", r.audited, r.mints, r.revocations, r.leasesAfter)
	for key, want := range map[string]string{
		"evicted leases revoked": "2", "users": "3", "tokens": "3", "statuses": "map[200 OK:4]",
	} {
		if got := outputValue(t, r.output, key); got != want {
			t.Errorf("%s: %s, want %s", key, got, want)
		}
	}
	if r.audited != 4 || r.mints != 3 || r.revocations != 0 || r.leasesAfter != 0 {
		t.Errorf("%d leases, %d mints, %d upstream revocations, %d leases left; want 4, 3, 0, 0", r.audited, r.mints, r.revocations, r.leasesAfter)
	}
	assertNoSecrets(t, "tsclient output", r.output, s.f.Secret(), nil)
}

// TestClientTokenSourceDeadline: Connect takes 4 s to mint; a caller whose
// deadline is 1 s gets context.DeadlineExceeded after about 1 s, not after
// the read; the read goes on, and the next caller gets its token, with one
// mint and one lease in all (revoked on Close).
func TestClientTokenSourceDeadline(t *testing.T) {
	t.Parallel()
	bin := buildTSClient(t)
	s := startClientStack(t)
	s.f.InjectFaults(t, pathToken, map[string]any{"delay_ms": 4000})
	r := s.run(t, repoRoot, bin, "deadline", clientPath, "1s")
	took := func(key, want string) float64 {
		m := regexp.MustCompile(`^(.*) after ([\d.]+)s$`).FindStringSubmatch(outputValue(t, r.output, key))
		if m == nil || m[1] != want {
			t.Fatalf("%s: %q, want %q after some seconds", key, outputValue(t, r.output, key), want)
		}
		f, _ := strconv.ParseFloat(m[2], 64)
		return f
	}
	if first := took("first", "deadline exceeded"); first > 2 {
		t.Errorf("the caller with a 1 s deadline waited %.1fs", first)
	}
	if second := took("second", "token"); second > 4.5 {
		t.Errorf("the next caller waited %.1fs: the first read should have gone on", second)
	}
	if got := outputValue(t, r.output, "status"); got != "200 OK" {
		t.Errorf("Connect answered %s", got)
	}
	if r.audited != 1 || r.mints != 1 || r.leasesAfter != 0 {
		t.Errorf("%d leases, %d mints, %d leases left; want 1, 1, 0", r.audited, r.mints, r.leasesAfter)
	}
}

// leaseWatcher lists the leases under a prefix every 100 ms and keeps every
// id it saw: a short-lived token's lease expires, and leaves the list, during
// a run.
type leaseWatcher struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	ids  map[string]bool
	err  error
}

func watchLeases(v *vault, prefix string) *leaseWatcher {
	w := &leaseWatcher{done: make(chan struct{}), ids: map[string]bool{}}
	poll := func() {
		ids, err := v.Leases(prefix)
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil && w.err == nil {
			w.err = err
		}
		for _, id := range ids {
			w.ids[id] = true
		}
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			poll()
			select {
			case <-w.done:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// stop ends the watch and returns the lease ids seen.
func (w *leaseWatcher) stop() ([]string, error) {
	close(w.done)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]string, 0, len(w.ids))
	for id := range w.ids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, w.err
}

// auditedLeases counts the responses to path in the audit log that carry a
// lease: every creds read or write that created one.
func auditedLeases(t *testing.T, auditPath, path string) int {
	t.Helper()
	return auditedResponses(t, auditPath, func(e auditEntry) bool {
		return e.Request.Path == path && e.Response.Secret.LeaseID != ""
	})
}

// auditedRenewals counts the successful renewals of leases under prefix
// named in the URL (PUT sys/leases/renew/<lease_id>), as tokensource sends
// them; the app policy allows no other form.
func auditedRenewals(t *testing.T, auditPath, prefix string) int {
	t.Helper()
	return auditedResponses(t, auditPath, func(e auditEntry) bool {
		return e.Error == "" && strings.HasPrefix(e.Request.Path, "sys/leases/renew/"+prefix)
	})
}

// auditEntry is the part of an audit log line the client tests read.
type auditEntry struct {
	Type    string `json:"type"`
	Error   string `json:"error"`
	Request struct {
		Path string `json:"path"`
	} `json:"request"`
	Response struct {
		Secret struct {
			LeaseID string `json:"lease_id"`
		} `json:"secret"`
	} `json:"response"`
}

// auditedResponses counts the response entries of the audit log that match.
func auditedResponses(t *testing.T, auditPath string, match func(auditEntry) bool) int {
	t.Helper()
	f, err := os.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var entry auditEntry
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("audit line is not JSON: %v", err)
		}
		if entry.Type == "response" && match(entry) {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
