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
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

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
