package main

// Scenario 10 on raft: many expired per-user tokens tidied while cached reads
// go on, and POST instacart/tidy called until the pass is over.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// raftTidyResult is the tidy of many expired per-user tokens on raft: once
// with no reads, then again (as many stored anew) under steady reads of
// this mount and of a KV mount.
type raftTidyResult struct {
	tokens   int // expired tokens stored for each pass
	fillTook time.Duration
	fillErrs int
	layout   string // where the engine stores per-user tokens
	quiet    tidyRun
	busy     tidyRun
	// GET instacart/tidy during the busy pass, when there is one, and the
	// pace it reported each second of both passes (0: unpaced).
	status            map[string]any
	statusMissing     string
	quietPaces, paces []int
	readClients       int
	kvClients         int
	// Cached reads of creds/bench and reads of kv/bench, side by side:
	// without tidy (before and after) and while it ran.
	without, during, post       sample
	kvWithout, kvDuring, kvPost sample
	duringWindows               int
	rss                         []phasePeak
	scr                         scrapes
	// CPU used by Vault and the plugin (and the cores' busy share) during
	// the tidy with no reads, the reads without tidy, and the tidy under
	// reads: what a tidied key costs, beside what the reads leave.
	quietCPU, withoutCPU, duringCPU cpuUse
	// What Vault's metrics say of raft over the reads without tidy and
	// during the tidy under reads.
	withoutRaft, duringRaft raftStats
}

// tidyRun is one timed tidy of the stored expired tokens.
type tidyRun struct {
	storedBefore, storedAfter int
	took                      time.Duration
	calls                     []tidyCall
}

func (t tidyRun) rate() float64 {
	return float64(t.storedBefore-t.storedAfter) / max(t.took.Seconds(), 1e-9)
}

// tidyLimitFor is the tidy target on raft with no reads: 5 minutes for
// 1,000,000 tokens, scaled to n (never under 30 s, so a small run is not
// judged on noise).
func tidyLimitFor(n int) time.Duration { return scaledLimit(5*time.Minute, n) }

// tidyBusyLimitFor is the target under steady reads: 15 minutes a million.
func tidyBusyLimitFor(n int) time.Duration { return scaledLimit(15*time.Minute, n) }

func scaledLimit(perMillion time.Duration, n int) time.Duration {
	return max(time.Duration(float64(perMillion)*float64(n)/1e6), 30*time.Second)
}

// raftTidy stores n expired per-user tokens on the raft server and times
// their tidy with no reads; then stores n more and times their tidy while
// cached reads of this mount and reads of a KV mount go on without a
// break, against the same reads without tidy.
//
// Minting n tokens through leased reads on raft would take n/400 seconds and
// leave n leases for Vault to expire meanwhile; instead one token is minted
// through the engine for a real record and its layout, and n copies of it,
// each for its own user id, token and past expiry, are written beside it
// through sys/raw.
func (r *runner) raftTidy(ctx context.Context, n int) (*raftTidyResult, error) {
	v, f := r.vault, r.fake
	v.Secrets = append(v.Secrets, f.Secret())
	if err := r.setupEngine(); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, v.Tail())
	}
	if err := v.Enable("kv", "kv", "", nil); err != nil {
		return nil, err
	}
	if err := v.Must(http.MethodPut, "kv/bench", map[string]any{"value": "bench"}, nil); err != nil {
		return nil, fmt.Errorf("writing kv/bench: %w", err)
	}
	mounted := time.Now()
	res := &raftTidyResult{tokens: n, readClients: 8, kvClients: 4}
	store, err := v.tokenStore("instacart", usersRole)
	if err != nil {
		return nil, err
	}
	pid, err := r.pluginPID()
	if err != nil {
		return nil, err
	}
	procs := map[string]int{"Vault": v.Proc.Pid(), "plugin": pid}
	rss := startPhasedRSS(pid, "storing expired tokens")
	scr := r.startScraper(r.opts.scrapeEvery)
	defer func() {
		if rss != nil {
			rss.finish()
			scr.finish(r)
		}
	}()

	// The template: one real per-user token, short-lived.
	const tmplLife = 2 * time.Second
	if err := f.SetLifetime(tmplLife); err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]string{"user_id": "tidy-template"})
	tmplAt := time.Now()
	ok, msg := r.load.do(ctx, http.MethodPost, r.url("instacart/creds/"+usersRole), body, nil)
	if err := f.SetLifetime(24 * time.Hour); err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("minting the template token: %s", v.Redact(msg))
	}
	var tmplKey string
	if err := store.walk(func(k string) { tmplKey = k }); err != nil {
		return nil, err
	}
	if tmplKey == "" {
		return nil, fmt.Errorf("the template token is not stored under %s or %s", store.usersPrefix(), store.tokensPrefix())
	}
	res.layout = strings.TrimPrefix(tmplKey, "logical/"+store.uuid+"/")
	res.layout = res.layout[:strings.LastIndexByte(res.layout, '/')+1] + "…"
	raw, err := v.rawGet(tmplKey)
	if err != nil {
		return nil, err
	}
	var tmpl map[string]any
	if err := json.Unmarshal([]byte(raw), &tmpl); err != nil {
		return nil, fmt.Errorf("the template record is not JSON: %w", err)
	}

	// The engine's own first tidy is due an hour after mounting, so no
	// periodic pass begins during the copies (one that did would list only
	// part of them, and the timed tidy would join it and then need another):
	// this run must stay inside that hour.
	fill := func(round int) error {
		if d := time.Since(mounted); d > 50*time.Minute {
			r.logf("  warning: %s since mounting: the engine's hourly tidy may start during the copies", d.Round(time.Minute))
		}
		rss.set("storing expired tokens")
		took, errs, err := r.storeExpired(ctx, store, tmplKey, tmpl, round, n)
		if round == 0 {
			res.fillTook, res.fillErrs = took, errs
		}
		return err
	}
	if err := fill(0); err != nil {
		return nil, err
	}
	time.Sleep(time.Until(tmplAt.Add(tmplLife + 500*time.Millisecond))) // the template has expired too

	// Tidy with no reads: storage's own pace.
	rss.set("tidy, no reads")
	cpu0 := readCPU(procs)
	profiled := r.profileTidy(ctx, pid)
	if res.quiet, res.quietPaces, err = r.timedTidy(ctx, store, nil); err != nil {
		return nil, err
	}
	res.quietCPU = readCPU(procs).since(cpu0)
	if err := profiled(); err != nil {
		r.logf("  warning: profiling the tidy: %v", err)
	}
	r.logf("  tidy with no reads: %d tokens in %s (%.0f/s), %d left, %d call(s)", res.quiet.storedBefore, res.quiet.took.Round(time.Second), res.quiet.rate(), res.quiet.storedAfter, len(res.quiet.calls))

	// As many again, tidied under steady reads of both mounts.
	if err := fill(1); err != nil {
		return nil, err
	}
	window := 5 * time.Second
	if r.opts.smoke {
		window = 500 * time.Millisecond
	}
	read := func(d time.Duration) (creds, kv sample) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			kv = r.load.run(ctx, r.url("kv/bench"), res.kvClients, d, 0)
		}()
		creds = r.load.run(ctx, r.url("instacart/creds/bench"), res.readClients, d, 0)
		wg.Wait()
		creds.firstErr, kv.firstErr = v.Redact(creds.firstErr), v.Redact(kv.firstErr)
		return creds, kv
	}
	rss.set("cached reads")
	read(time.Second) // warm-up: the role-wide token is minted and cached
	// Four windows, so that Vault's metrics have an interval of 10 s wholly
	// inside them; as many after tidy.
	readWindows := func() (creds, kv sample) {
		var cs, ks []sample
		for range 4 {
			c, k := read(window)
			cs, ks = append(cs, c), append(ks, k)
		}
		return merge(cs...), merge(ks...)
	}
	cpu0 = readCPU(procs)
	metrics := startRaftMetrics(v)
	res.without, res.kvWithout = readWindows()
	res.withoutRaft = metrics.finish()
	res.withoutCPU = readCPU(procs).since(cpu0)

	rss.set("tidy under reads")
	var tidyDone atomic.Bool
	type outcome struct {
		run   tidyRun
		paces []int
		err   error
	}
	done := make(chan outcome, 1)
	cpu0 = readCPU(procs)
	metrics = startRaftMetrics(v)
	go func() {
		run, paces, err := r.timedTidy(ctx, store, func() {
			if res.status == nil && res.statusMissing == "" {
				res.status, res.statusMissing = r.tidyStatus()
			}
		})
		tidyDone.Store(true)
		done <- outcome{run, paces, err}
	}()
	var during, kvDuring []sample
	for !tidyDone.Load() && ctx.Err() == nil {
		c, k := read(window)
		if tidyDone.Load() {
			break // tidy ended within the window: not wholly during it
		}
		during, kvDuring = append(during, c), append(kvDuring, k)
		r.logf("  … reads during tidy: creds %.0f/s, kv %.0f/s (without tidy %.0f/s, %.0f/s)", c.throughput(), k.throughput(), res.without.throughput(), res.kvWithout.throughput())
	}
	o := <-done
	res.duringRaft = metrics.finish()
	res.duringCPU = readCPU(procs).since(cpu0)
	if o.err != nil {
		return nil, o.err
	}
	res.busy, res.paces = o.run, o.paces
	res.during, res.kvDuring, res.duringWindows = merge(during...), merge(kvDuring...), len(during)
	rss.set("reads after tidy")
	// As many windows after as before: the reads drift over the run (each
	// creds read leaves a lease of the token's remaining life, so Vault
	// holds more of them with every window), and tidy is judged against the
	// windows on both sides of it.
	res.post, res.kvPost = readWindows()
	res.rss = rss.finish()
	res.scr = scr.finish(r)
	rss = nil
	r.logf("  tidy under reads: %d tokens in %s (%.0f/s), %d left, %d call(s); creds reads %.0f/s without tidy, %.0f/s during (%d windows), %.0f/s after; kv reads %.0f/s, %.0f/s, %.0f/s",
		res.busy.storedBefore, res.busy.took.Round(time.Second), res.busy.rate(), res.busy.storedAfter, len(res.busy.calls),
		res.without.throughput(), res.during.throughput(), res.duringWindows, res.post.throughput(),
		res.kvWithout.throughput(), res.kvDuring.throughput(), res.kvPost.throughput())
	return res, nil
}

// profileTidy, with -tidy-profile, profiles Vault (and the plugin, when
// built with pprof) for 15 s from 2 s into the tidy with no reads; the
// returned function waits for the profiles and writes their listings to
// the -out directory.
func (r *runner) profileTidy(ctx context.Context, pid int) func() error {
	if !r.opts.tidyProfile {
		return func() error { return nil }
	}
	const delay, d = 2 * time.Second, 15 * time.Second
	profs := map[string]<-chan cpuProfile{
		"vault-cpu-tidy-raft.txt": profileVault(ctx, r.vault, delay, d, filepath.Join(r.dir, "vault-cpu-tidy.pb.gz")),
	}
	if u := r.pluginPprofURL(pid); u != "" {
		profs["plugin-cpu-tidy-raft.txt"] = profileURL(ctx, r.load.client, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", u, int(d/time.Second)), "", r.vault.Redact, delay, filepath.Join(r.dir, "plugin-cpu-tidy.pb.gz"))
	}
	return func() error {
		if err := os.MkdirAll(r.opts.out, 0o755); err != nil {
			return err
		}
		for file, ch := range profs {
			p := <-ch
			if p.err != "" {
				return fmt.Errorf("%s: %s", file, p.err)
			}
			if err := os.WriteFile(filepath.Join(r.opts.out, file), []byte(p.top+"\n"+p.cum), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
}

// storeExpired writes n copies of the template token through sys/raw, each
// its own user id (distinct per round) and token, expired an hour ago.
func (r *runner) storeExpired(ctx context.Context, store *tokenStore, tmplKey string, tmpl map[string]any, round, n int) (time.Duration, int, error) {
	expired := time.Now().Add(-time.Hour).UTC()
	stopLog := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-stopLog:
				return
			case <-t.C:
				r.logf("  … storing expired tokens")
			}
		}
	}()
	t0 := time.Now()
	fill := runEach(ctx, 32, time.Hour, n, func(ctx context.Context, i int) (bool, string) {
		id := fmt.Sprintf("expired-%d-%08d", round, i)
		sum := sha256.Sum256([]byte("token/" + id))
		rec := make(map[string]any, len(tmpl))
		for k, x := range tmpl {
			rec[k] = x
		}
		rec["user_id"] = id
		rec["access_token"] = "expired-" + hex.EncodeToString(sum[:16])
		rec["expires_at"] = expired.Format(time.RFC3339Nano)
		if _, ok := rec["requested_at"]; ok {
			rec["requested_at"] = expired.Add(-2 * time.Hour).Format(time.RFC3339Nano)
		}
		if _, ok := rec["created_at"]; ok {
			rec["created_at"] = expired.Add(-2 * time.Hour).Format(time.RFC3339Nano)
		}
		val, _ := json.Marshal(rec)
		payload, _ := json.Marshal(map[string]string{"value": string(val)})
		return r.load.put(ctx, r.url("sys/raw/"+store.userKey(tmplKey, id)), payload)
	})
	close(stopLog)
	took := time.Since(t0)
	if fill.errs > 0 {
		return took, fill.errs, fmt.Errorf("storing expired tokens: %d of %d writes failed (first: %s)", fill.errs, n, r.vault.Redact(fill.firstErr))
	}
	r.logf("  stored %d expired tokens in %s (%.0f/s)", n, took.Round(time.Second), float64(n)/took.Seconds())
	return took, 0, nil
}

// merge is one sample of several runs: their reads and their time.
func merge(ss ...sample) sample {
	var m sample
	for _, s := range ss {
		m.ok += s.ok
		m.errs += s.errs
		m.elapsed += s.elapsed
		m.lat = append(m.lat, s.lat...)
		if m.firstErr == "" {
			m.firstErr = s.firstErr
		}
	}
	slices.Sort(m.lat)
	return m
}
