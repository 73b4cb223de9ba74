package main

// Scenario 10, many shoppers: -users distinct users on a fresh dev server,
// their tokens expiring during the run, then tidy and a role delete, with the
// plugin's memory sampled and instacart/metrics scraped every 15 s (as
// Prometheus would) throughout; then the tidy on a fresh single-node raft
// server: as many expired per-user tokens stored, timed away by
// POST instacart/tidy while cached reads go on (their throughput without
// tidy and during it compared).

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// manyResult is scenario 10.
type manyResult struct {
	users, clients int
	lifetime       time.Duration
	latency        time.Duration
	// The dev server's part.
	s             sample
	tokenRequests int
	storedEnd     int // right after the users
	storedExpired int // once all expired, before tidy
	storedAfter   int // after tidy
	// instacart_shared_tokens of the role: the peak over the run's scrapes,
	// and at a scrape right after tidy (gauges refresh at most every minute).
	gaugePeak, gaugeAfterTidy float64
	sawGauge                  bool
	waited, tidyTook          time.Duration
	tidyCalls                 []tidyCall
	roleDelete                time.Duration
	roleDeleteErr             string
	rssBefore, rssEnd         int64
	rss                       []phasePeak
	scr                       scrapes
	expiredDuringRun          int // reads that started after the first token expired
}

// runMany is scenario 10 on fresh servers: the dev server's part with
// -only users (or all), the raft tidy with -only users or tidy (or all).
func runMany(ctx context.Context, opts options, bins *binaries, f *stack.Fake, dir string, logf func(string, ...any), rep *report) error {
	if opts.runs("users") {
		if err := runManyInmem(ctx, opts, bins, f, dir, logf, rep); err != nil {
			return err
		}
	}
	logf("==> scenario 10 (raft): %d expired per-user tokens stored, then POST instacart/tidy while cached reads run", opts.users)
	rv, err := startRaftVault(opts.vaultBin, bins.pluginDir, filepath.Join(dir, "many-raft"))
	if err != nil {
		return err
	}
	if rep.machine.vaultVersion == "" {
		rep.machine = machine(rv.Version())
	}
	rr := &runner{opts: opts, storage: "raft", bins: bins, vault: rv, fake: f, load: newLoader(rv.Token), dir: dir, logf: logf}
	rep.tidyRaft, err = rr.raftTidy(ctx, opts.users)
	rv.Stop()
	if err != nil {
		return fmt.Errorf("tidy on raft: %w", err)
	}
	return nil
}

func runManyInmem(ctx context.Context, opts options, bins *binaries, f *stack.Fake, dir string, logf func(string, ...any), rep *report) error {
	logf("==> scenario 10 (inmem): %d distinct users, %d clients, tokens living %s, then tidy and a role delete; instacart/metrics scraped every %s", opts.users, opts.userClients, opts.userLifetime, opts.scrapeEvery)
	v, err := startDevVaultRaw(opts.vaultBin, bins.pluginDir, filepath.Join(dir, "many-inmem"))
	if err != nil {
		return err
	}
	if rep.machine.vaultVersion == "" {
		rep.machine = machine(v.Version())
	}
	r := &runner{opts: opts, storage: "inmem", bins: bins, vault: v, fake: f, load: newLoader(v.Token), dir: dir, logf: logf}
	res, err := r.manyUsers(ctx)
	v.Stop()
	if err != nil {
		return fmt.Errorf("many users: %w", err)
	}
	rep.many = res
	return nil
}

func (r *runner) manyUsers(ctx context.Context) (*manyResult, error) {
	v, f, opts := r.vault, r.fake, r.opts
	v.Secrets = append(v.Secrets, f.Secret())
	if err := r.setupEngine(); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, v.Tail())
	}
	res := &manyResult{users: opts.users, clients: opts.userClients, lifetime: opts.userLifetime, latency: opts.latency}
	store, err := v.tokenStore("instacart", usersRole)
	if err != nil {
		return nil, err
	}
	pid, err := r.pluginPID()
	if err != nil {
		return nil, err
	}
	if res.rssBefore, err = stack.RSSBytes(pid); err != nil {
		return nil, err
	}
	if err := f.SetLifetime(opts.userLifetime); err != nil {
		return nil, err
	}
	defer f.SetLifetime(24 * time.Hour) //nolint:errcheck // the fake's default; the run is over
	if err := f.Reset(); err != nil {
		return nil, err
	}
	rss := startPhasedRSS(pid, "users")
	scr := r.startScraper(opts.scrapeEvery)
	defer func() {
		if rss != nil {
			rss.finish()
			scr.finish(r)
		}
	}()

	var reads []userRead
	progress := r.progress(ctx, "users", opts.users)
	res.s, reads = r.readUsers(ctx, usersRole, 0, opts.users, opts.userClients)
	progress()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	st, err := f.Stats()
	if err != nil {
		return nil, err
	}
	res.tokenRequests = st.Requests["/v2/oauth/token"]
	rss.set("after the users")
	if res.rssEnd, err = stack.RSSBytes(pid); err != nil {
		return nil, err
	}
	if res.storedEnd, err = store.count(); err != nil {
		return nil, err
	}
	firstEnd, lastEnd := endSpan(reads)
	for i := range reads {
		if reads[i].start.Load() > firstEnd+int64(opts.userLifetime) {
			res.expiredDuringRun++
		}
	}
	r.logf("  %d users: %.0f users/s, p50 %s, p99 %s, %d failed, %d token requests, %d stored, RSS %s",
		opts.users, res.s.throughput(), fmtDur(res.s.pct(50)), fmtDur(res.s.pct(99)), res.s.errs, res.tokenRequests, res.storedEnd, mib(res.rssEnd))

	until := time.Unix(0, lastEnd).Add(opts.userLifetime + 2*time.Second)
	r.logf("  waiting %s for every token to expire", time.Until(until).Round(time.Second))
	t0 := time.Now()
	select {
	case <-time.After(time.Until(until)):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res.waited = time.Since(t0)
	if res.storedExpired, err = store.count(); err != nil {
		return nil, err
	}
	rss.set("tidy")
	res.tidyCalls, res.tidyTook, res.storedAfter, err = r.tidyUntilEmpty(ctx, store, 4*tidyLimitFor(opts.users)+5*time.Minute)
	if err != nil {
		return nil, err
	}
	r.logf("  after expiry: %d stored; %d tidy call(s) in %s; %d stored after", res.storedExpired, len(res.tidyCalls), res.tidyTook.Round(time.Second), res.storedAfter)
	res.gaugeAfterTidy, _ = scr.now(r)

	rss.set("role delete")
	t0 = time.Now()
	if err := v.Must(http.MethodDelete, "instacart/roles/"+usersRole, nil, nil); err != nil {
		res.roleDeleteErr = compact(err.Error())
	}
	res.roleDelete = time.Since(t0)
	time.Sleep(min(opts.scrapeEvery, 5*time.Second)) // a scrape or more after the delete
	res.rss = rss.finish()
	res.scr = scr.finish(r)
	rss = nil
	res.gaugePeak, res.sawGauge = res.scr.peakShared, res.scr.sawShared
	r.logf("  role delete %s; RSS peaks %v; %d scrapes (%d failed, slowest %s)", res.roleDelete.Round(time.Millisecond), res.rss, res.scr.n, res.scr.failed, fmtDur(res.scr.maxTook))
	return res, nil
}

// progress logs, every minute, how far a long run has come (the fake counts
// token requests); call the returned func to stop.
func (r *runner) progress(ctx context.Context, what string, total int) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if st, err := r.fake.Stats(); err == nil {
					n := st.Requests["/v2/oauth/token"]
					r.logf("  … %s: %d of %d after %s", what, n, total, time.Since(start).Round(time.Second))
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}
