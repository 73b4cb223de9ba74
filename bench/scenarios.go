package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// target is one read path compared in the cached-read scenarios.
type target struct {
	key, label, path string
	skip             string // why it is not run, empty when it is
	// base and via, when set, send the reads elsewhere than the runner's
	// Vault with its root token (through Vault Proxy: its address, no token).
	base string
	via  *loader
}

const (
	tInstacart = "instacart"
	tNoop      = "noop-leased"
	tNoopPlain = "noop-unleased"
	tOauthapp  = "oauthapp"
	tKV        = "kv"
	tProxy     = "proxy"
)

// runner holds the processes and options every scenario on one Vault
// server uses.
type runner struct {
	opts    options
	storage string // "inmem" (the dev server) or "raft"
	bins    *binaries
	vault   *vault
	fake    *stack.Fake
	load    *loader
	dir     string
	logf    func(format string, args ...any)
	proxy   *stack.Proxy // raft only: Vault Proxy with examples/proxy/proxy.hcl
}

// setup registers and configures every engine the scenarios read from.
func (r *runner) setup() error {
	v, f := r.vault, r.fake
	v.Secrets = append(v.Secrets, f.Secret())
	if err := v.Register(r.bins.pluginDir, pluginName, pluginVer); err != nil {
		return err
	}
	if err := v.Enable("instacart", pluginName, pluginVer, nil); err != nil {
		return err
	}
	steps := []struct {
		path string
		body map[string]any
	}{
		{"instacart/config", map[string]any{"client_id": fakeClientID, "client_secret": f.Secret(), "base_url": f.URL}},
		{"instacart/roles/bench", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}},
		{"instacart/roles/bench-excl", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment", "token_reuse": "exclusive"}},
		{"instacart/roles/" + usersRole, map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*", "token_reuse": "shared"}},
	}
	for _, s := range steps {
		if err := v.Must(http.MethodPut, s.path, s.body, nil); err != nil {
			return fmt.Errorf("configuring our plugin: %w", err)
		}
	}

	// Unversioned: the no-op and peer plugins do not report a running version.
	if err := v.Register(r.bins.pluginDir, noopName, ""); err != nil {
		return err
	}
	if err := v.Enable("noop", noopName, "", nil); err != nil {
		return err
	}

	if err := v.Enable("kv", "kv", "", map[string]string{"version": "2"}); err != nil {
		return err
	}
	// KV v2 upgrades its storage asynchronously after mounting; retry briefly.
	var kvErr error
	if err := stack.WaitFor(30*time.Second, "KV v2 to accept writes", func() bool {
		kvErr = v.Must(http.MethodPut, "kv/data/bench", map[string]any{"data": map[string]any{"access_token": "kv-value-0123456789abcdef", "token_type": "Bearer"}}, nil)
		return kvErr == nil
	}); err != nil {
		return fmt.Errorf("%w: %v", err, kvErr)
	}

	if r.bins.oauthappErr == nil {
		if err := r.setupOauthapp(); err != nil {
			r.bins.oauthappErr = err
		}
	}
	return nil
}

// setupOauthapp configures the peer plugin for the same fake and scope:
// a "custom" provider server pointing at the fake's token URL and a
// client-credentials credential under self/.
func (r *runner) setupOauthapp() error {
	v, f := r.vault, r.fake
	if err := v.Register(r.bins.pluginDir, oauthappName, ""); err != nil {
		return err
	}
	if err := v.Enable("oauthapp", oauthappName, "", nil); err != nil {
		return err
	}
	if err := v.Must(http.MethodPut, "oauthapp/servers/fake", map[string]any{
		"provider": "custom", "provider_options": map[string]string{"token_url": f.URL + "/v2/oauth/token"},
		"client_id": fakeClientID, "client_secret": f.Secret(),
	}, nil); err != nil {
		return fmt.Errorf("configuring oauthapp server: %w", err)
	}
	if err := v.Must(http.MethodPut, "oauthapp/self/bench", map[string]any{"server": "fake", "scopes": []string{"connect:fulfillment"}}, nil); err != nil {
		return fmt.Errorf("configuring oauthapp self/bench: %w", err)
	}
	return nil
}

func (r *runner) url(path string) string { return r.vault.Addr + "/v1/" + path }

// cachedReads is scenarios 1 and 2: every target (and extra ones) at every
// concurrency, in rounds whose target order rotates, so drift and order
// effects hit all targets alike. Leases are revoked between concurrency
// levels so the lease table does not grow without bound across the run.
func (r *runner) cachedReads(ctx context.Context, extra ...target) (*abResult, error) {
	res := &abResult{conc: r.opts.concurrency, samples: map[string]map[int][]sample{}}
	res.targets = []target{
		{key: tInstacart, label: "instacart/creds/bench (cached)", path: "instacart/creds/bench"},
		{key: tNoop, label: "noop/leased", path: "noop/leased"},
		{key: tNoopPlain, label: "noop/unleased", path: "noop/unleased"},
		{key: tOauthapp, label: "oauthapp/self/bench (cached)", path: "oauthapp/self/bench"},
		{key: tKV, label: "kv/data/bench (KV v2)", path: "kv/data/bench"},
	}
	res.targets = append(res.targets, extra...)
	if r.bins.oauthappErr != nil {
		res.targets[3].skip = r.bins.oauthappErr.Error()
	}
	var active []target
	for _, t := range res.targets {
		res.samples[t.key] = map[int][]sample{}
		if t.skip == "" {
			active = append(active, t)
		}
	}
	// Warm-up: mint/cache tokens, open connections, fault in code paths.
	for _, t := range active {
		if s := r.read(ctx, t, 8, r.opts.warmup); s.ok == 0 {
			return nil, fmt.Errorf("warm-up of %s: no successful read (%d errors, first: %s)", t.path, s.errs, r.vault.Redact(s.firstErr))
		}
	}
	if err := r.revokeBenchLeases(); err != nil {
		return nil, err
	}
	for _, c := range r.opts.concurrency {
		for round := range r.opts.rounds {
			for i := range active {
				t := active[(i+round)%len(active)]
				s := r.read(ctx, t, c, r.opts.duration)
				if s.errs > 0 {
					r.logf("  %s c=%d: %d errors (first: %s)", t.path, c, s.errs, r.vault.Redact(s.firstErr))
				}
				res.samples[t.key][c] = append(res.samples[t.key][c], s)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		t0 := time.Now()
		if err := r.revokeBenchLeases(); err != nil {
			return nil, err
		}
		r.logf("  %s c=%-3d %s(leases revoked in %s)", r.storage, c, res.summaryLine(c), time.Since(t0).Round(time.Millisecond))
	}
	return res, nil
}

// read runs c readers of target t for d.
func (r *runner) read(ctx context.Context, t target, c int, d time.Duration) sample {
	if t.via != nil {
		return t.via.run(ctx, t.base+"/v1/"+t.path, c, d, 0)
	}
	return r.load.run(ctx, r.url(t.path), c, d, 0)
}

// revokeBenchLeases drops the leases the cached-read scenarios create.
func (r *runner) revokeBenchLeases() error {
	for _, p := range []string{"instacart/creds/bench/", "noop/leased/"} {
		if err := r.vault.revokePrefix(p); err != nil {
			return fmt.Errorf("cleaning up leases: %w", err)
		}
	}
	return nil
}

// coldResult is scenario 3: many readers arrive while no token is cached.
type coldResult struct {
	readers  int
	mints    []int           // upstream token requests per repetition
	distinct []int           // distinct tokens handed out per repetition
	elapsed  []time.Duration // until every reader had its token
	failed   []int
	firstErr string
}

func (r *runner) coldStart(ctx context.Context, readers, reps int) (*coldResult, error) {
	res := &coldResult{readers: readers}
	url := r.url("instacart/creds/bench")
	for range reps {
		if err := r.vault.Must(http.MethodDelete, "instacart/cache/bench", nil, nil); err != nil {
			return nil, fmt.Errorf("flushing the shared token: %w", err)
		}
		if err := r.fake.Reset(); err != nil {
			return nil, err
		}
		var (
			wg     sync.WaitGroup
			gate   = make(chan struct{})
			mu     sync.Mutex
			tokens = map[[32]byte]bool{} // hashes: tokens are compared, never kept or printed
			failed int
		)
		for range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				var body bytes.Buffer
				ok, msg := r.load.get(ctx, url, &body)
				var out struct {
					Data struct {
						AccessToken string `json:"access_token"`
					} `json:"data"`
				}
				if ok && (json.Unmarshal(body.Bytes(), &out) != nil || out.Data.AccessToken == "") {
					ok, msg = false, "response without access_token"
				}
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					failed++
					if res.firstErr == "" {
						res.firstErr = r.vault.Redact(msg)
					}
					return
				}
				tokens[sha256.Sum256([]byte(out.Data.AccessToken))] = true
			}()
		}
		start := time.Now()
		close(gate)
		wg.Wait()
		elapsed := time.Since(start)
		st, err := r.fake.Stats()
		if err != nil {
			return nil, err
		}
		res.mints = append(res.mints, st.Requests["/v2/oauth/token"])
		res.distinct = append(res.distinct, len(tokens))
		res.elapsed = append(res.elapsed, elapsed)
		res.failed = append(res.failed, failed)
	}
	return res, r.vault.revokePrefix("instacart/creds/bench/")
}

// exclResult is scenario 4 at one concurrency.
type exclResult struct {
	conc          int
	s             sample
	tokenRequests int
}

// exclusive measures reads that mint a fresh token each; the fake counts the
// upstream token requests they cause.
func (r *runner) exclusive(ctx context.Context) ([]exclResult, error) {
	var out []exclResult
	for _, c := range r.opts.concurrency {
		if err := r.fake.Reset(); err != nil {
			return nil, err
		}
		s := r.load.run(ctx, r.url("instacart/creds/bench-excl"), c, r.opts.duration, 0)
		st, err := r.fake.Stats()
		if err != nil {
			return nil, err
		}
		out = append(out, exclResult{conc: c, s: s, tokenRequests: st.Requests["/v2/oauth/token"]})
		r.logf("  c=%-3d %.0f reads/s p99 %s, %d token requests for %d reads (%d errors)", c, s.throughput(), fmtDur(s.pct(99)), st.Requests["/v2/oauth/token"], s.ok, s.errs)
		// Revoking calls Connect's revoke endpoint per lease: do it without
		// the simulated latency so clean-up does not dominate the run.
		if err := r.fake.SetLatency(0); err != nil {
			return nil, err
		}
		err = r.vault.revokePrefix("instacart/creds/bench-excl/")
		if lerr := r.fake.SetLatency(r.opts.latency); err == nil {
			err = lerr
		}
		if err != nil {
			return nil, fmt.Errorf("revoking exclusive leases: %w", err)
		}
	}
	return out, nil
}

// leaseResult is scenario 5.
type leaseResult struct {
	reads         int
	direct        int    // leases created by reads straight to Vault
	viaAgent      int    // leases created by the same reads through Vault Agent
	agentSkip     string // why the agent half did not run
	directErrs    int
	agentErrs     int
	agentFirstErr string
}

func (r *runner) leaseVolume(ctx context.Context, reads int, withAgent bool) (*leaseResult, error) {
	const prefix = "instacart/creds/bench/"
	res := &leaseResult{reads: reads}
	// count revokes what is there, runs f and returns how many leases it created.
	count := func(f func()) (int, error) {
		if err := r.vault.revokePrefix(prefix); err != nil {
			return 0, err
		}
		before, err := r.vault.Leases(prefix)
		if err != nil {
			return 0, err
		}
		f()
		after, err := r.vault.Leases(prefix)
		if err != nil {
			return 0, err
		}
		return len(after) - len(before), nil
	}
	var err error
	res.direct, err = count(func() {
		res.directErrs = r.load.run(ctx, r.url("instacart/creds/bench"), 8, time.Hour, reads).errs
	})
	if err != nil {
		return nil, fmt.Errorf("direct reads: %w", err)
	}
	if !withAgent {
		res.agentSkip = "skipped in -smoke mode"
		return res, r.vault.revokePrefix(prefix)
	}
	// The agent authenticates with a child token of root, as an application would with its own.
	var tok struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := r.vault.Must(http.MethodPost, "auth/token/create", map[string]any{"policies": []string{"root"}, "ttl": "1h"}, &tok); err != nil {
		return nil, fmt.Errorf("token for Vault Agent: %w", err)
	}
	r.vault.Secrets = append(r.vault.Secrets, tok.Auth.ClientToken)
	agentDir := filepath.Join(r.dir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent dir: %w", err)
	}
	a, err := startAgent(r.opts.vaultBin, r.vault, agentDir, tok.Auth.ClientToken)
	if err != nil {
		res.agentSkip = "Vault Agent did not start: " + r.vault.Redact(err.Error())
		return res, r.vault.revokePrefix(prefix)
	}
	defer a.Stop()
	through := &loader{client: r.load.client} // no token: the agent injects its auto-auth token
	res.viaAgent, err = count(func() {
		s := through.run(ctx, a.Addr+"/v1/instacart/creds/bench", 8, time.Hour, reads)
		res.agentErrs, res.agentFirstErr = s.errs, r.vault.Redact(s.firstErr)
	})
	if err != nil {
		return nil, fmt.Errorf("reads through Vault Agent: %w", err)
	}
	a.Stop()
	return res, r.vault.revokePrefix(prefix)
}
