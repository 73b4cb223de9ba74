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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// phasedRSS samples the plugin's RSS every 200 ms and keeps the peak of each
// phase of the run.
type phasedRSS struct {
	mu    sync.Mutex
	phase string
	order []string
	peaks map[string]int64
	stop  chan struct{}
	done  chan struct{}
}

func startPhasedRSS(pid int, phase string) *phasedRSS {
	s := &phasedRSS{peaks: map[string]int64{}, stop: make(chan struct{}), done: make(chan struct{})}
	s.set(phase)
	go func() {
		defer close(s.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if n, err := stack.RSSBytes(pid); err == nil {
				s.mu.Lock()
				s.peaks[s.phase] = max(s.peaks[s.phase], n)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *phasedRSS) set(phase string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.peaks[phase]; !ok {
		s.order = append(s.order, phase)
		s.peaks[phase] = 0
	}
	s.phase = phase
}

// finish stops sampling; the peaks by phase, in order.
func (s *phasedRSS) finish() []phasePeak {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []phasePeak
	for _, p := range s.order {
		out = append(out, phasePeak{p, s.peaks[p]})
	}
	return out
}

type phasePeak struct {
	phase string
	peak  int64
}

func peakOf(ps []phasePeak) int64 {
	var m int64
	for _, p := range ps {
		m = max(m, p.peak)
	}
	return m
}

// scrapes is what scraping instacart/metrics every interval saw.
type scrapes struct {
	n, failed int
	maxTook   time.Duration
	maxBytes  int
	firstErr  string
	// instacart_shared_tokens{role=usersRole}: the highest value seen, and
	// the value at the last scrape that had the series (a role delete drops
	// it).
	peakShared, lastShared float64
	sawShared              bool
}

type scraper struct {
	mu   sync.Mutex
	res  scrapes
	stop chan struct{}
	done chan struct{}
}

// startScraper GETs /v1/instacart/metrics?format=prometheus every interval,
// as Prometheus scrapes (examples/prometheus), with the loader's transport.
func (r *runner) startScraper(every time.Duration) *scraper {
	s := &scraper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.scrape(r)
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *scraper) scrape(r *runner) {
	t0 := time.Now()
	req, err := http.NewRequest(http.MethodGet, r.url("instacart/metrics?format=prometheus"), nil)
	if err != nil {
		return
	}
	req.Header.Set("X-Vault-Token", r.vault.Token)
	resp, err := r.load.client.Do(req)
	var body []byte
	status := 0
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	took := time.Since(t0)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.n++
	s.res.maxTook = max(s.res.maxTook, took)
	s.res.maxBytes = max(s.res.maxBytes, len(body))
	if err != nil || status != http.StatusOK {
		s.res.failed++
		if s.res.firstErr == "" {
			if err != nil {
				s.res.firstErr = r.vault.Redact(err.Error())
			} else {
				s.res.firstErr = fmt.Sprintf("HTTP %d", status)
			}
		}
		return
	}
	total, seen := 0.0, false
	for k, x := range parseProm(string(body)) {
		if strings.HasPrefix(k, "instacart_shared_tokens") && strings.Contains(k, `role="`+usersRole+`"`) {
			total, seen = total+x, true
		}
	}
	if seen {
		s.res.lastShared, s.res.sawShared = total, true
		s.res.peakShared = max(s.res.peakShared, total)
	}
}

// now is one scrape at once; what the gauge said.
func (s *scraper) now(r *runner) (float64, bool) {
	s.scrape(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res.lastShared, s.res.sawShared
}

func (s *scraper) finish(r *runner) scrapes {
	close(s.stop)
	<-s.done
	s.scrape(r) // one last, after everything
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res
}

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

// raftTidyResult is the tidy of many expired per-user tokens on raft.
type raftTidyResult struct {
	tokens        int // expired tokens stored for it
	fillTook      time.Duration
	fillErrs      int
	layout        string // where the engine stores per-user tokens
	storedBefore  int
	storedAfter   int
	tidyTook      time.Duration
	tidyCalls     []tidyCall
	status        map[string]any // GET instacart/tidy, when there is one
	statusMissing string
	// Cached reads of creds/bench at readClients: without tidy (before and
	// after) and while it ran.
	readClients           int
	without, during, post sample
	duringWindows         int
	rss                   []phasePeak
	scr                   scrapes
}

// tidyLimitFor is the tidy target on raft: 10 minutes for 1,000,000 tokens,
// scaled to n (never under 30 s, so a small run is not judged on noise).
func tidyLimitFor(n int) time.Duration {
	return max(time.Duration(float64(10*time.Minute)*float64(n)/1e6), 30*time.Second)
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
	firstEnd, lastEnd := int64(0), int64(0)
	for i := range reads {
		if e := reads[i].end.Load(); e != 0 {
			if firstEnd == 0 || e < firstEnd {
				firstEnd = e
			}
			lastEnd = max(lastEnd, e)
		}
	}
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

// tidyBackground is the engine's warning for a tidy call that outlasted its
// request.
const tidyBackground = "tidy goes on in the background"

// tidyUntilEmpty calls POST instacart/tidy until a call answers without the
// "goes on in the background" warning and none of store's tokens is left, for
// at most limit; it times from the first call.
func (r *runner) tidyUntilEmpty(ctx context.Context, store *tokenStore, limit time.Duration) ([]tidyCall, time.Duration, int, error) {
	var calls []tidyCall
	left := -1
	t0 := time.Now()
	for time.Since(t0) < limit && ctx.Err() == nil {
		var tidy struct {
			Warnings []string `json:"warnings"`
			Data     struct {
				Expired  int `json:"expired_tokens_removed"`
				Orphaned int `json:"orphaned_tokens_removed"`
				Retired  int `json:"retired_credentials_removed"`
			} `json:"data"`
		}
		t1 := time.Now()
		err := r.vault.Must(http.MethodPost, "instacart/tidy", nil, &tidy)
		c := tidyCall{took: time.Since(t1), expired: tidy.Data.Expired, orphaned: tidy.Data.Orphaned, retired: tidy.Data.Retired, warnings: tidy.Warnings}
		if err != nil {
			c.err = compact(r.vault.Redact(err.Error()))
		}
		calls = append(calls, c)
		r.logf("  POST instacart/tidy #%d: %s", len(calls), c)
		background := false
		for _, w := range tidy.Warnings {
			background = background || strings.Contains(w, tidyBackground)
		}
		if background || err != nil {
			continue // the pass goes on; the next call joins it
		}
		var cerr error
		if left, cerr = store.count(); cerr != nil {
			return calls, time.Since(t0), left, cerr
		}
		if left == 0 {
			break
		}
	}
	took := time.Since(t0)
	if left != 0 {
		var err error
		if left, err = store.count(); err != nil {
			return calls, took, left, err
		}
	}
	return calls, took, left, nil
}

// tidyStatus is GET instacart/tidy (the running pass's progress), when the
// engine has it.
func (r *runner) tidyStatus() (map[string]any, string) {
	var out struct {
		Data map[string]any `json:"data"`
	}
	st, raw, err := r.vault.Call(http.MethodGet, "instacart/tidy", nil, &out)
	switch {
	case err != nil:
		return nil, compact(r.vault.Redact(err.Error()))
	case st != http.StatusOK:
		return nil, fmt.Sprintf("HTTP %d: %s", st, compact(r.vault.Redact(raw)))
	}
	return out.Data, ""
}

// raftTidy stores n expired per-user tokens on the raft server, then times
// their tidy while cached reads go on, against the same reads without it.
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
	mounted := time.Now()
	res := &raftTidyResult{tokens: n, readClients: 8}
	store, err := v.tokenStore("instacart", usersRole)
	if err != nil {
		return nil, err
	}
	pid, err := r.pluginPID()
	if err != nil {
		return nil, err
	}
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
	if d := time.Since(mounted); d > 50*time.Minute {
		r.logf("  warning: %s since mounting: the engine's hourly tidy may start during the copies", d.Round(time.Minute))
	}

	// The copies: expired an hour ago, each its own user and token.
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
		id := fmt.Sprintf("expired-%08d", i)
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
	res.fillTook, res.fillErrs = time.Since(t0), fill.errs
	if fill.errs > 0 {
		return nil, fmt.Errorf("storing expired tokens: %d of %d writes failed (first: %s)", fill.errs, n, v.Redact(fill.firstErr))
	}
	time.Sleep(time.Until(tmplAt.Add(tmplLife + 500*time.Millisecond))) // the template has expired too
	if res.storedBefore, err = store.count(); err != nil {
		return nil, err
	}
	r.logf("  stored %d expired tokens (%s) in %s (%.0f/s); %d stored in all", n, res.layout, res.fillTook.Round(time.Second), float64(n)/res.fillTook.Seconds(), res.storedBefore)

	// Cached reads without tidy.
	read := func(d time.Duration) sample {
		s := r.load.run(ctx, r.url("instacart/creds/bench"), res.readClients, d, 0)
		s.firstErr = v.Redact(s.firstErr)
		return s
	}
	window := 5 * time.Second
	if r.opts.smoke {
		window = 500 * time.Millisecond
	}
	rss.set("cached reads")
	read(time.Second) // warm-up: the role-wide token is minted and cached
	res.without = merge(read(window), read(window))

	// Tidy, with cached reads in windows spaced through it.
	rss.set("tidy")
	type outcome struct {
		calls []tidyCall
		took  time.Duration
		left  int
		err   error
	}
	var tidyDone atomic.Bool
	done := make(chan outcome, 1)
	go func() {
		calls, took, left, err := r.tidyUntilEmpty(ctx, store, 3*tidyLimitFor(n)+10*time.Minute)
		tidyDone.Store(true)
		done <- outcome{calls, took, left, err}
	}()
	gap := max(tidyLimitFor(n)/10-window, window)
	if r.opts.smoke {
		gap = 0
	}
	var during []sample
	for !tidyDone.Load() && ctx.Err() == nil {
		s := read(window)
		if tidyDone.Load() {
			break // tidy ended within the window: not wholly during it
		}
		during = append(during, s)
		if res.status == nil && res.statusMissing == "" {
			res.status, res.statusMissing = r.tidyStatus()
		}
		select {
		case <-time.After(gap):
		case o := <-done:
			done <- o
		}
	}
	o := <-done
	if o.err != nil {
		return nil, o.err
	}
	res.tidyCalls, res.tidyTook, res.storedAfter = o.calls, o.took, o.left
	res.during, res.duringWindows = merge(during...), len(during)
	rss.set("cached reads after tidy")
	res.post = read(window)
	res.rss = rss.finish()
	res.scr = scr.finish(r)
	rss = nil
	r.logf("  tidy: %d tokens in %s (%.0f/s), %d left, %d call(s); cached reads %.0f/s without tidy, %.0f/s during (%d windows), %.0f/s after",
		res.storedBefore, res.tidyTook.Round(time.Second), float64(res.storedBefore-res.storedAfter)/res.tidyTook.Seconds(), res.storedAfter, len(res.tidyCalls),
		res.without.throughput(), res.during.throughput(), res.duringWindows, res.post.throughput())
	return res, nil
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
