package main

// Scenarios on production storage: a single-node raft Vault, reads through
// Vault Proxy, and many users on one assertion role.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

const (
	// proxyRole is read through Vault Proxy. It is named after the role of
	// examples/policies/app.hcl, so the proxy's token carries that policy as
	// committed.
	proxyRole = "fulfillment"
	// usersRole is the per-user scenario's assertion role; probeRole is one
	// like it whose tokens the scenario's counts leave out.
	usersRole = "shoppers"
	probeRole = "shoppers-probe"
	// lruSize is the engine's in-memory token bound (token_cache.go).
	lruSize = 10_000
)

// startRaftVault runs a single-node Vault with integrated storage (raft),
// initialised and unsealed, with sys/raw on to count stored tokens.
func startRaftVault(bin, pluginDir, dir string) (*vault, error) {
	return startRaftVaultWith(stack.RaftVaultOptions{Bin: bin, PluginDir: pluginDir, Dir: dir})
}

// startRaftVaultWith is startRaftVault with more options (Bin, PluginDir and
// Dir set; sys/raw is always on).
func startRaftVaultWith(o stack.RaftVaultOptions) (*vault, error) {
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raft vault dir: %w", err)
	}
	o.LogLevel, o.RawStorage = "warn", true
	v, err := stack.StartRaftVault(o)
	if err != nil {
		return nil, err
	}
	return &vault{v}, nil
}

// setupRaft adds, beside what setup configures, the role read through Vault
// Proxy and the per-user assertion role, and starts Vault Proxy with the
// committed example config and a token carrying the committed app policy.
func (r *runner) setupRaft() error {
	v := r.vault
	for _, s := range []struct {
		path string
		body map[string]any
	}{
		{"instacart/roles/" + proxyRole, map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}},
		{"instacart/roles/" + probeRole, map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*", "token_reuse": "shared"}},
	} {
		if err := v.Must(http.MethodPut, s.path, s.body, nil); err != nil {
			return fmt.Errorf("configuring our plugin: %w", err)
		}
	}
	policy, err := os.ReadFile(filepath.Join(r.opts.repo, "examples", "policies", "app.hcl"))
	if err != nil {
		return fmt.Errorf("app policy: %w", err)
	}
	if err := v.Must(http.MethodPut, "sys/policies/acl/instacart-app", map[string]any{"policy": string(policy)}, nil); err != nil {
		return err
	}
	var tok struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := v.Must(http.MethodPost, "auth/token/create", map[string]any{"policies": []string{"instacart-app"}, "ttl": "24h"}, &tok); err != nil {
		return fmt.Errorf("token for Vault Proxy: %w", err)
	}
	v.Secrets = append(v.Secrets, tok.Auth.ClientToken)
	dir := filepath.Join(r.dir, "proxy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("proxy dir: %w", err)
	}
	p, err := stack.StartProxy(stack.ProxyOptions{Bin: r.opts.vaultBin, Dir: dir, Example: filepath.Join(r.opts.repo, "examples", "proxy", "proxy.hcl"),
		VaultAddr: v.Addr, Token: tok.Auth.ClientToken})
	if err != nil {
		return fmt.Errorf("starting Vault Proxy: %s", v.Redact(err.Error()))
	}
	r.proxy = p
	return nil
}

// proxyTarget is the cached-read target through Vault Proxy: no Vault token
// (the proxy adds its auto-auth token), the same shared transport.
func (r *runner) proxyTarget() target {
	return target{key: tProxy, label: "instacart/creds/" + proxyRole + " via Vault Proxy (cache {})", path: "instacart/creds/" + proxyRole,
		base: r.proxy.Addr, via: &loader{client: r.load.client}}
}

// proxyResult is what the reads through Vault Proxy left in Vault.
type proxyResult struct {
	reads, leases int
}

// proxyLeases counts the reads made through the proxy in the cached-read
// rounds and the leases they created in Vault (the token lives 24 h, so one
// lease per token life is one lease).
func (r *runner) proxyLeases(ab *abResult) (*proxyResult, error) {
	res := &proxyResult{}
	for _, ss := range ab.samples[tProxy] {
		for _, s := range ss {
			res.reads += s.ok
		}
	}
	ids, err := r.vault.Leases("instacart/creds/" + proxyRole + "/")
	if err != nil {
		return nil, err
	}
	res.leases = len(ids)
	return res, nil
}

// usersResult is the per-user scenario.
type usersResult struct {
	users, clients, mintBound int
	latency, lifetime         time.Duration
	s                         sample
	// preExpiry is the reads that started before the first token expired;
	// later ones ran while Vault expired the first leases at about the rate
	// new ones were made (a steady day of shoppers).
	preExpiry            sample
	tokenRequests        int
	rssBefore, rssPeak   int64
	rssEnd, rssAfterTidy int64
	storedEnd            int // stored tokens right after the run
	storedExpired        int // once every token has expired, before tidy
	storedAfter          int // after tidy
	tidyTook, waited     time.Duration
	// tidyCalls are the POSTs to instacart/tidy it took to leave none stored.
	tidyCalls []tidyCall
	// Re-reads of users whose tokens are fresh: evicted from memory when
	// rereadEvicted (more users than the in-memory bound).
	rereads             sample
	rereadEvicted       bool
	rereadTokenRequests int
	cpu                 cpuUse
	raft                raftStats
	profile             cpuProfile // of Vault, during the run
}

// tidyCall is one POST to instacart/tidy and its answer.
type tidyCall struct {
	took                       time.Duration
	expired, orphaned, retired int
	warnings                   []string
	err                        string
}

func (c tidyCall) String() string {
	if c.err != "" {
		return fmt.Sprintf("failed after %s: %s", c.took.Round(time.Second), c.err)
	}
	s := fmt.Sprintf("%s: %d expired, %d orphaned, %d retired credentials removed", c.took.Round(100*time.Millisecond), c.expired, c.orphaned, c.retired)
	if len(c.warnings) > 0 {
		s += fmt.Sprintf(" (warning: %q)", strings.Join(c.warnings, "; "))
	}
	return s
}

// coldUsers is the cold per-user read on one server: n users not seen
// before, read once each by clients at a time.
type coldUsers struct {
	storage                       string
	users, clients, tokenRequests int
	s                             sample
}

func userID(i int) string { return fmt.Sprintf("shopper-%07d", i) }

// userRead is when one user's read started and ended (unix ns; end 0 when
// it failed).
type userRead struct{ start, end atomic.Int64 }

// endSpan is when the first and the last of reads ended (Unix nanoseconds;
// reads that never ended are left out).
func endSpan(reads []userRead) (first, last int64) {
	for i := range reads {
		if e := reads[i].end.Load(); e != 0 {
			if first == 0 || e < first {
				first = e
			}
			last = max(last, e)
		}
	}
	return first, last
}

// readUsers has clients read creds/<role> once for each of n users (ids
// from first on), recording when each read started and ended.
func (r *runner) readUsers(ctx context.Context, role string, first, n, clients int) (sample, []userRead) {
	url := r.url("instacart/creds/" + role)
	reads := make([]userRead, n)
	s := runEach(ctx, clients, time.Hour, n, func(ctx context.Context, i int) (bool, string) {
		body, _ := json.Marshal(map[string]string{"user_id": userID(first + i)})
		reads[i].start.Store(time.Now().UnixNano())
		ok, msg := r.load.do(ctx, http.MethodPost, url, body, nil)
		if ok {
			reads[i].end.Store(time.Now().UnixNano())
		}
		return ok, msg
	})
	s.firstErr = r.vault.Redact(s.firstErr)
	return s, reads
}

// coldUserReads is the cold per-user read on role at each concurrency in
// users (clients → users): how its latency grows as readers compete for
// the machine, all under the mint bound. Each user id is new.
func (r *runner) coldUserReads(ctx context.Context, role string, users map[int]int) ([]*coldUsers, error) {
	var out []*coldUsers
	var cs []int
	for c := range users {
		cs = append(cs, c)
	}
	slices.Sort(cs)
	first := 0
	for _, c := range cs {
		n := users[c]
		if err := r.fake.Reset(); err != nil {
			return nil, err
		}
		s, _ := r.readUsers(ctx, role, first, n, c)
		first += n
		st, err := r.fake.Stats()
		if err != nil {
			return nil, err
		}
		r.logf("  %s: %d users at %d clients: %.0f users/s, p50 %s, p99 %s, %d failed, %d token requests", r.storage, n, c, s.throughput(), fmtDur(s.pct(50)), fmtDur(s.pct(99)), s.errs, st.Requests["/v2/oauth/token"])
		out = append(out, &coldUsers{storage: r.storage, users: n, clients: c, tokenRequests: st.Requests["/v2/oauth/token"], s: s})
	}
	return out, nil
}

// perUser is scenario 8: n distinct users each read creds/<usersRole> once
// (clients at a time) against the fake at its latency; tokens live lifetime,
// so that, once the last has expired, a tidy must leave none stored.
func (r *runner) perUser(ctx context.Context, n, clients int, lifetime time.Duration) (*usersResult, error) {
	v, f := r.vault, r.fake
	res := &usersResult{users: n, clients: clients, latency: r.opts.latency, lifetime: lifetime}
	var cfg struct {
		Data struct {
			MaxConcurrentMints int `json:"max_concurrent_mints"`
		} `json:"data"`
	}
	if err := v.Must(http.MethodGet, "instacart/config", nil, &cfg); err != nil {
		return nil, err
	}
	res.mintBound = cfg.Data.MaxConcurrentMints
	store, err := v.tokenStore("instacart", usersRole)
	if err != nil {
		return nil, err
	}
	stored := store.count
	pid, err := r.pluginPID()
	if err != nil {
		return nil, err
	}
	if res.rssBefore, err = stack.RSSBytes(pid); err != nil {
		return nil, err
	}
	if err := f.SetLifetime(lifetime); err != nil {
		return nil, err
	}
	defer f.SetLifetime(24 * time.Hour) //nolint:errcheck // the fake's default; the run is over
	if err := f.Reset(); err != nil {
		return nil, err
	}

	procs := map[string]int{"Vault": v.Proc.Pid(), "plugin": pid, "Connect fake": f.Pid(), "load generator": os.Getpid()}
	cpu0 := readCPU(procs)
	sampler := startRSSSampler(pid)
	metrics := startRaftMetrics(v)
	profDelay, profDur := 30*time.Second, 20*time.Second
	if r.opts.smoke {
		profDelay, profDur = 0, time.Second
	}
	prof := profileVault(ctx, v, profDelay, profDur, filepath.Join(r.dir, "vault-cpu-users.pb.gz"))
	var reads []userRead
	res.s, reads = r.readUsers(ctx, usersRole, 0, n, clients)
	res.raft = metrics.finish()
	res.profile = <-prof
	res.rssPeak = peakOf(sampler.finish())
	res.cpu = readCPU(procs).since(cpu0)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if res.rssEnd, err = stack.RSSBytes(pid); err != nil {
		return nil, err
	}
	st, err := f.Stats()
	if err != nil {
		return nil, err
	}
	res.tokenRequests = st.Requests["/v2/oauth/token"]
	if res.storedEnd, err = stored(); err != nil {
		return nil, err
	}
	// Reads that started before the first token expired.
	firstEnd, lastEnd := endSpan(reads)
	firstExpiry := firstEnd + int64(lifetime)
	for i := range reads {
		if e, b := reads[i].end.Load(), reads[i].start.Load(); e != 0 && b < firstExpiry {
			res.preExpiry.lat = append(res.preExpiry.lat, time.Duration(e-b))
		}
	}
	slices.Sort(res.preExpiry.lat)
	res.preExpiry.ok = len(res.preExpiry.lat)
	r.logf("  %d users at %d clients: %.0f users/s, p50 %s, p99 %s (before any expiry: %d reads, p99 %s), %d failed, %d token requests, %d stored, RSS %s (peak %s); CPU busy %.0f%%",
		n, clients, res.s.throughput(), fmtDur(res.s.pct(50)), fmtDur(res.s.pct(99)), res.preExpiry.ok, fmtDur(res.preExpiry.pct(99)), res.s.errs, res.tokenRequests, res.storedEnd, mib(res.rssEnd), mib(res.rssPeak), 100*res.cpu.busy)

	// Re-read users whose tokens are still fresh (at most half their life
	// used): with more users than the in-memory bound, the oldest of them
	// have left memory, so each read costs a storage read and no mint.
	freshSince := time.Now().Add(-lifetime/2 + max(lifetime/12, time.Second)).UnixNano()
	var pick []int
	limit := n - lruSize - lruSize/5 // well outside the most recently used
	res.rereadEvicted = limit > 0
	if !res.rereadEvicted {
		limit = n
	}
	for i := range limit {
		if e := reads[i].end.Load(); e != 0 && e >= freshSince {
			pick = append(pick, i)
		}
	}
	if len(pick) > 2000 {
		pick = pick[len(pick)-2000:]
	}
	if len(pick) > 0 {
		if err := f.Reset(); err != nil {
			return nil, err
		}
		url := r.url("instacart/creds/" + usersRole)
		res.rereads = runEach(ctx, 8, time.Hour, len(pick), func(ctx context.Context, i int) (bool, string) {
			body, _ := json.Marshal(map[string]string{"user_id": userID(pick[i])})
			return r.load.do(ctx, http.MethodPost, url, body, nil)
		})
		res.rereads.firstErr = v.Redact(res.rereads.firstErr)
		if st, err = f.Stats(); err != nil {
			return nil, err
		}
		res.rereadTokenRequests = st.Requests["/v2/oauth/token"]
		r.logf("  %d re-reads of fresh tokens (evicted from memory: %t): %d token requests, %d failed", res.rereads.ok+res.rereads.errs, res.rereadEvicted, res.rereadTokenRequests, res.rereads.errs)
	}

	// Wait until the last token has expired (the fake counts its life from
	// the request; the plugin from the answer), then tidy.
	until := time.Unix(0, lastEnd).Add(lifetime + 2*time.Second)
	t0 := time.Now()
	r.logf("  waiting %s for every token to expire", time.Until(until).Round(time.Second))
	select {
	case <-time.After(time.Until(until)):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res.waited = time.Since(t0)
	if res.storedExpired, err = stored(); err != nil {
		return nil, err
	}
	// Tidy until none is left, for at most 10 minutes: a call may answer
	// before its pass is over (the engine's own choice, or Vault's request
	// deadline, max_request_duration, 90 s by default), and the next call
	// goes on with it.
	if res.tidyCalls, res.tidyTook, res.storedAfter, err = r.tidyUntilEmpty(ctx, store, 10*time.Minute); err != nil {
		return nil, err
	}
	if res.rssAfterTidy, err = stack.RSSBytes(pid); err != nil {
		return nil, err
	}
	r.logf("  after expiry: %d stored; %d tidy call(s) in %s; %d stored after; RSS %s",
		res.storedExpired, len(res.tidyCalls), res.tidyTook.Round(time.Second), res.storedAfter, mib(res.rssAfterTidy))
	return res, nil
}
