package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

type machineInfo struct {
	cpu, goVersion, vaultVersion string
	cores                        int
}

func machine(vaultVersion string) machineInfo {
	m := machineInfo{cpu: "unknown", cores: runtime.NumCPU(), goVersion: runtime.Version(), vaultVersion: vaultVersion}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

type report struct {
	opts                       options
	machine                    machineInfo
	started                    time.Time
	elapsed                    time.Duration
	oauthappSkip               string
	ab                         *abResult // the dev server (inmem); nil with -raft-only
	cold                       *coldResult
	excl                       []exclResult
	leases                     *leaseResult
	rssIdle, rssPeak, rssAfter int64
	raftAB                     *abResult // the raft server, with the Vault Proxy target
	proxy                      *proxyResult
	users                      *usersResult
	inmemUsers, raftUsers      []*coldUsers    // cold per-user reads by concurrency
	loadStart, loadEnd         string          // /proc/loadavg's 1, 5 and 15 minute averages
	floor                      []*floorRun     // scenario 9, inmem then raft
	many                       *manyResult     // scenario 10 on the dev server
	tidyRaft                   *raftTidyResult // scenario 10's tidy on raft
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

const (
	met    = "met"
	missed = "**missed**"
)

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f ms", ms)
	}
}

func (rep *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	m := rep.machine
	p("# Benchmark: vault-plugin-secrets-instacart")
	p("")
	p("%s · %s, %d cores · %s · Vault %s · %s", rep.started.UTC().Format("2006-01-02 15:04 MST"), m.cpu, m.cores, m.goVersion, m.vaultVersion, runMode(rep.opts))
	p("")
	p("Two Vault servers, one after the other: the dev server (**inmem**: in-memory storage) and a single-node server on integrated storage (**raft**, as production runs: every lease and every stored token is a durable raft write). Connect fake latency %s per token request; %d round(s) × %s per target and concurrency, target order rotated each round; one shared keep-alive HTTP transport; client, Vault, Vault Proxy, the fake and plugins share the same cores. Total run %s.",
		rep.opts.latency, rep.opts.rounds, rep.opts.duration, rep.elapsed.Round(time.Second))
	p("")
	p("Load average (1, 5, 15 min) at the start: %s; at the end: %s. Anything else running on the machine shows in the figures.", rep.loadStart, rep.loadEnd)
	p("")
	p("## Targets")
	p("")
	p("| # | target | measured | result |")
	p("|---|---|---|---|")
	cs := rep.checks()
	var whys []check
	for _, c := range cs {
		p("| %s | %s | %s | %s |", c.id, c.target, c.measured, c.result)
		if c.result == missed {
			whys = append(whys, c)
		}
	}
	if len(whys) > 0 {
		p("")
		p("### Missed, and why (from this run's figures)")
		p("")
		for _, c := range whys {
			p("- **%s** (%s): %s", c.id, c.measured, c.why)
		}
	}
	if rep.ab != nil {
		p("")
		p("## Cached reads on inmem (scenarios 1–2, medians over rounds)")
		p("")
		rep.abTable(p, rep.ab)
		p("")
		p("oauthapp's `self/` read returns unleased data, so it skips Vault's lease bookkeeping that ours (and noop/leased) pay for; noop/unleased shows that cost.")
	}
	if ab := rep.raftAB; ab != nil {
		p("")
		p("## Cached reads on raft (scenario 7, medians over rounds)")
		p("")
		rep.abTable(p, ab)
		p("")
		p("## Through Vault Proxy on raft (scenario 7)")
		p("")
		p("`vault proxy` with [`examples/proxy/proxy.hcl`](../../examples/proxy/proxy.hcl) as committed (`cache {}`, API proxy with its auto-auth token, a token with [`examples/policies/app.hcl`](../../examples/policies/app.hcl)); the same rounds as the table above. Ratios are medians of per-round ratios.")
		p("")
		p("| clients | via Proxy req/s | p50 | p99 | errors | ÷ oauthapp direct | ÷ our direct read | p99 ÷ our direct |")
		p("|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, c := range ab.conc {
			st, ok := ab.stat(tProxy, c)
			if !ok {
				continue
			}
			ro, rd, rp := "—", "—", "—"
			if r, ok := ab.ratio(tProxy, tOauthapp, c, thr); ok {
				ro = fmt.Sprintf("%.2f×", r)
			}
			if r, ok := ab.ratio(tProxy, tInstacart, c, thr); ok {
				rd = fmt.Sprintf("%.2f×", r)
			}
			if r, ok := ab.ratio(tProxy, tInstacart, c, p99); ok {
				rp = fmt.Sprintf("%.2f×", r)
			}
			p("| %d | %.0f | %s | %s | %d | %s | %s | %s |", c, st.thr, fmtDur(st.p50), fmtDur(st.p99), st.errs, ro, rd, rp)
		}
		p("")
		p("%d reads through the proxy created %d lease(s) in Vault; the same reads made directly create one lease each.", rep.proxy.reads, rep.proxy.leases)
	}
	if rep.ab != nil || rep.raftAB != nil {
		p("")
		p("## What a lease per read costs")
		p("")
		p("The no-op plugin's two paths differ only in the lease: noop/unleased ÷ noop/leased (medians over rounds).")
		p("")
		p("| clients | storage | leased req/s | unleased req/s | unleased ÷ leased throughput | leased p99 | unleased p99 |")
		p("|---:|---|---:|---:|---:|---:|---:|")
		for _, x := range []struct {
			name string
			ab   *abResult
		}{{"inmem", rep.ab}, {"raft", rep.raftAB}} {
			if x.ab == nil {
				continue
			}
			for _, c := range x.ab.conc {
				l, okL := x.ab.stat(tNoop, c)
				u, okU := x.ab.stat(tNoopPlain, c)
				if !okL || !okU || l.thr == 0 {
					continue
				}
				p("| %d | %s | %.0f | %.0f | %.2f× | %s | %s |", c, x.name, l.thr, u.thr, u.thr/l.thr, fmtDur(l.p99), fmtDur(u.p99))
			}
		}
	}
	if rep.ab != nil {
		rep.inmemSections(p)
	}
	if u := rep.users; u != nil {
		p("")
		p("## Per-user tokens on raft (scenario 8)")
		p("")
		p("%d distinct user ids, each written once to `creds/%s` (an assertion role with `allowed_user_ids='*'`, `token_reuse=shared`) by %d clients; the fake answers each token request after %s and hands out tokens living %s, so every token expires within the run; `max_concurrent_mints` = %d (the mount's setting), so at most %.0f mints/s.",
			u.users, usersRole, u.clients, u.latency, u.lifetime, u.mintBound, float64(u.mintBound)/u.latency.Seconds())
		p("")
		p("| measure | value |")
		p("|---|---:|")
		p("| users served / failed | %d / %d |", u.s.ok, u.s.errs)
		p("| users/s | %.0f |", u.s.throughput())
		p("| read latency p50 / p90 / p99 / max | %s / %s / %s / %s |", fmtDur(u.s.pct(50)), fmtDur(u.s.pct(90)), fmtDur(u.s.pct(99)), fmtDur(u.s.pct(100)))
		p("| reads that started before the first token expired: count, p50 / p99 | %d, %s / %s |", u.preExpiry.ok, fmtDur(u.preExpiry.pct(50)), fmtDur(u.preExpiry.pct(99)))
		p("| upstream token requests | %d (%.3f per user) |", u.tokenRequests, float64(u.tokenRequests)/float64(max(u.users, 1)))
		p("| plugin RSS before / peak / end / after tidy | %s / %s / %s / %s |", mib(u.rssBefore), mib(u.rssPeak), mib(u.rssEnd), mib(u.rssAfterTidy))
		p("| stored tokens right after the run | %d |", u.storedEnd)
		p("| stored tokens once all expired (waited %s), before tidy | %d |", u.waited.Round(time.Second), u.storedExpired)
		for i, c := range u.tidyCalls {
			p("| `POST instacart/tidy`, call %d of %d | %s |", i+1, len(u.tidyCalls), strings.ReplaceAll(c.String(), "|", "/"))
		}
		if u.tidyTook > 0 && u.storedExpired > u.storedAfter {
			p("| tidy rate (tokens removed ÷ time until none was left) | %.0f tokens/s |", float64(u.storedExpired-u.storedAfter)/u.tidyTook.Seconds())
		}
		p("| stored tokens after tidy | %d |", u.storedAfter)
		if n := u.rereads.ok + u.rereads.errs; n > 0 {
			where := "still in memory"
			if u.rereadEvicted {
				where = fmt.Sprintf("evicted from memory (older than the %d most recent)", lruSize)
			}
			p("| re-reads of fresh tokens %s | %d reads, %d failed, %d upstream token requests, p99 %s |", where, n, u.rereads.errs, u.rereadTokenRequests, fmtDur(u.rereads.pct(99)))
		}
		if u.s.firstErr != "" {
			p("")
			p("First failure: `%s`", compact(u.s.firstErr))
		}
		p("")
		p("Cold per-user reads by concurrency (new user ids each; inmem on the dev server, raft at 1 and 8 clients on a second role like it, at %d clients the run above):", u.clients)
		p("")
		p("| storage | clients | users | users/s | p50 | p90 | p99 | max | failed | token requests |")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, r := range rep.coldRuns() {
			p("| %s | %d | %d | %.0f | %s | %s | %s | %s | %d | %d |", r.storage, r.clients, r.users, r.s.throughput(), fmtDur(r.s.pct(50)), fmtDur(r.s.pct(90)), fmtDur(r.s.pct(99)), fmtDur(r.s.pct(100)), r.s.errs, r.tokenRequests)
		}
		if cs := u.cpuSentence(rep.machine.cores); cs != "" {
			p("")
			p("Where the time went: %s %s", cs, u.raftSentence())
		}
		p("")
		p("Stored tokens are counted in Vault's storage itself, through `sys/raw`: every key under `logical/<mount uuid>/users/%s/<shard>/` and every one but `role` under `logical/<mount uuid>/tokens/%s/` (either storage layout).", usersRole, usersRole)
		if pr := u.profile; pr.err != "" {
			p("")
			p("Vault CPU profile: not taken (%s).", compact(pr.err))
		} else if pr.top != "" {
			p("")
			p("### Vault's CPU profile during the per-user run")
			p("")
			p("Taken through Vault's own `sys/pprof/profile` for %s during the run (%s). Share of Vault's CPU time spent in (cumulative, so nested rows overlap):", pr.took.Round(time.Second), pr.total())
			p("")
			p("| where | share |")
			p("|---|---:|")
			for _, g := range pr.breakdown() {
				p("| %s | %s |", g[0], g[1])
			}
			p("")
			p("Full listing, by own and by cumulative time: [`%s`](%s).", profileFile, profileFile)
		}
	}
	rep.floorSection(p)
	rep.manySection(p)
	if rep.opts.smoke {
		p("")
		p("Smoke run: numbers are not meaningful; oauthapp and Vault Agent were skipped.")
	}
	return b.String()
}

// abTable is the cached-read table of one server (the Vault Proxy target
// has its own table).
func (rep *report) abTable(p func(string, ...any), ab *abResult) {
	p("Ratios are medians of per-round ratios instacart ÷ target (throughput: higher is better for us; p99: lower is better for us).")
	p("")
	p("| clients | target | req/s | p50 | p90 | p99 | errors | thr ratio | p99 ratio |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range ab.conc {
		for _, t := range ab.targets {
			if t.skip != "" || t.key == tProxy {
				continue
			}
			st, _ := ab.stat(t.key, c)
			tr, pr := "—", "—"
			if t.key != tInstacart {
				if r, ok := ab.ratio(tInstacart, t.key, c, thr); ok {
					tr = fmt.Sprintf("%.2f×", r)
				}
				if r, ok := ab.ratio(tInstacart, t.key, c, p99); ok {
					pr = fmt.Sprintf("%.2f×", r)
				}
			}
			p("| %d | %s | %.0f | %s | %s | %s | %d | %s | %s |", c, t.label, st.thr, fmtDur(st.p50), fmtDur(st.p90), fmtDur(st.p99), st.errs, tr, pr)
		}
	}
	for _, t := range ab.targets {
		if t.skip != "" {
			p("")
			p("%s: not run (%s).", t.label, t.skip)
		}
	}
}

// inmemSections are scenarios 3-6 on the dev server.
func (rep *report) inmemSections(p func(string, ...any)) {
	p("")
	p("## Cold start on inmem (scenario 3)")
	p("")
	p("| rep | readers | upstream token requests | distinct tokens | failed reads | all readers served in |")
	p("|---:|---:|---:|---:|---:|---:|")
	for i := range rep.cold.mints {
		p("| %d | %d | %d | %d | %d | %s |", i+1, rep.cold.readers, rep.cold.mints[i], rep.cold.distinct[i], rep.cold.failed[i], fmtDur(rep.cold.elapsed[i]))
	}
	if rep.cold.firstErr != "" {
		p("")
		p("First failure: `%s`", rep.cold.firstErr)
	}
	p("")
	p("## Exclusive mints on inmem (scenario 4, one run per concurrency)")
	p("")
	p("| clients | reads/s | p50 | p90 | p99 | errors | token requests | per read |")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, e := range rep.excl {
		per := 0.0
		if e.s.ok > 0 {
			per = float64(e.tokenRequests) / float64(e.s.ok)
		}
		p("| %d | %.0f | %s | %s | %s | %d | %d | %.3f |", e.conc, e.s.throughput(), fmtDur(e.s.pct(50)), fmtDur(e.s.pct(90)), fmtDur(e.s.pct(99)), e.s.errs, e.tokenRequests, per)
	}
	p("")
	p("## Lease volume on inmem (scenario 5)")
	p("")
	l := rep.leases
	p("| path | reads | leases created | errors |")
	p("|---|---:|---:|---:|")
	p("| direct to Vault | %d | %d | %d |", l.reads, l.direct, l.directErrs)
	if l.agentSkip != "" {
		p("| through Vault Agent (cache + api_proxy) | — | not run (%s) | — |", l.agentSkip)
	} else {
		p("| through Vault Agent (cache + api_proxy) | %d | %d | %d |", l.reads, l.viaAgent, l.agentErrs)
		if l.agentFirstErr != "" {
			p("")
			p("First error through the Agent: `%s`", compact(l.agentFirstErr))
		}
	}
	p("")
	p("## Plugin memory on inmem (scenario 6)")
	p("")
	p("VmRSS of the plugin process: idle %s, peak during cached reads %s, after %s.", mib(rep.rssIdle), mib(rep.rssPeak), mib(rep.rssAfter))
}

func runMode(o options) string {
	if o.smoke {
		return "smoke run"
	}
	return "full run"
}
