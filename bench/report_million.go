package main

// Scenario 10 in the report: many shoppers on the dev server, their tidy on raft.

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// manyChecks are targets 10a-10h: 10a-10b on the dev server, 10c-10d on
// both parts run, 10e-10h on raft.
func (rep *report) manyChecks() []check {
	m, t := rep.many, rep.tidyRaft
	if m == nil && t == nil {
		return nil
	}
	var cs []check
	var peaks []phasePeak
	stored, ok := "", true
	if m != nil {
		n := fmt.Sprintf("%d users", m.users)
		c10a := check{id: "10a", target: n + " (inmem): 0 failures", measured: fmt.Sprintf("%d failed, %d served", m.s.errs, m.s.ok), result: verdict(m.s.errs == 0 && m.s.ok == m.users)}
		if c10a.result == missed {
			c10a.why = fmt.Sprintf("First failure: `%s`.", compact(m.s.firstErr))
		}
		c10b := check{id: "10b", target: n + " (inmem): exactly one upstream token request per user", measured: fmt.Sprintf("%d token requests for %d users", m.tokenRequests, m.users), result: verdict(m.tokenRequests == m.users)}
		if c10b.result == missed {
			c10b.why = fmt.Sprintf("%d requests more than users, with %d failed reads.", m.tokenRequests-m.users, m.s.errs)
		}
		cs = append(cs, c10a, c10b)
		for _, p := range m.rss {
			peaks = append(peaks, phasePeak{"inmem: " + p.phase, p.peak})
		}
		stored = fmt.Sprintf("inmem: %d stored after the users, %d once expired, %d after %d tidy call(s) taking %s", m.storedEnd, m.storedExpired, m.storedAfter, len(m.tidyCalls), m.tidyTook.Round(time.Second))
		ok = m.storedAfter == 0
	}
	if t != nil {
		for _, p := range t.rss {
			peaks = append(peaks, phasePeak{"raft: " + p.phase, p.peak})
		}
		if stored != "" {
			stored += "; "
		}
		stored += fmt.Sprintf("raft: %d stored before tidy, %d after; %d stored again, %d after tidy under reads", t.quiet.storedBefore, t.quiet.storedAfter, t.busy.storedBefore, t.busy.storedAfter)
		ok = ok && t.quiet.storedAfter == 0 && t.busy.storedAfter == 0
	}
	n := fmt.Sprintf("%d users", rep.opts.users)
	peak := peakOf(peaks)
	c10c := check{id: "10c", target: n + ": plugin RSS < 64 MiB through the users, tidy, role delete and scrapes (every 200 ms)",
		measured: fmt.Sprintf("peak %s (%s)", mib(peak), phaseList(peaks)), result: verdict(peak < 64<<20 && peak > 0)}
	if c10c.result == missed {
		c10c.why = "Sampled every 200 ms, RSS jumps between samples rather than growing with the tokens held (memory holds at most " + fmt.Sprint(lruSize) + "): "
		if m != nil {
			c10c.why += fmt.Sprintf("on inmem %s right after the users but a peak of %s, with scrapes every %s whose gauge rebuild (at most once a minute) lists every stored token of the role in one storage LIST, and tidy, which lists them all too. ", mib(m.rssEnd), mib(peakOf(m.rss)), rep.opts.scrapeEvery)
		}
		c10c.why += "Transient lists of hundreds of thousands of keys (and their gRPC messages) are what the Go heap grows for; the runtime keeps the pages a while after."
	}
	cs = append(cs, c10c, check{id: "10d", target: n + ": stored tokens after expiry and tidy = 0", measured: stored, result: verdict(ok)})
	if t != nil {
		cs = append(cs, t.checks(rep.machine.cores)...)
	}
	return cs
}

// checks are targets 10e-10h: tidy on raft, with no reads and under reads.
func (t *raftTidyResult) checks(cores int) []check {
	timed := func(id, when string, run tidyRun, limit time.Duration, perMillion string) check {
		c := check{id: id, target: fmt.Sprintf("raft: tidy of %d expired tokens %s ≤ %s (%s per 1,000,000, scaled)", run.storedBefore, when, fmtMin(limit), perMillion),
			measured: fmt.Sprintf("%s, %.0f tokens/s, %d left", run.took.Round(time.Second), run.rate(), run.storedAfter), result: verdict(run.took <= limit && run.storedAfter == 0)}
		if c.result == missed {
			c.why = fmt.Sprintf("At this rate 1,000,000 tokens would take %s; the target needs %.0f tokens/s. %d tidy call(s): %s.",
				fmtMin(time.Duration(1e6/max(run.rate(), 1e-9)*float64(time.Second))), float64(run.storedBefore)/limit.Seconds(), len(run.calls), tidyCallsLine(run.calls))
		}
		return c
	}
	c10e := timed("10e", "with no reads", t.quiet, tidyLimitFor(t.quiet.storedBefore), "5 min")
	c10h := timed("10h", fmt.Sprintf("under steady reads (%d + %d clients)", t.readClients, t.kvClients), t.busy, tidyBusyLimitFor(t.busy.storedBefore), "15 min")
	if c10h.result == missed {
		c10h.why += " " + paceLine(t.paces) + " " + t.costLine(cores)
	}
	// The reads are judged against those before tidy and after it, side
	// by side: over a run they drift (every creds read leaves a lease of
	// the token's remaining life, and Vault holds more of them each window).
	ratio := func(id, what string, clients int, without, during, post sample) check {
		r, before := 0.0, 0.0
		if both := (without.throughput() + post.throughput()) / 2; both > 0 {
			r = during.throughput() / both
			before = during.throughput() / max(without.throughput(), 1e-9)
		}
		c := check{id: id, target: fmt.Sprintf("raft: %s (%d clients) during tidy ≥ 0.8× their throughput without (the mean of before and after)", what, clients),
			measured: fmt.Sprintf("%.2f× (%.0f reads/s during vs %.0f before and %.0f after; %.2f× of before alone; p99 %s during vs %s before and %s after; %d window(s) during tidy)",
				r, during.throughput(), without.throughput(), post.throughput(), before, fmtDur(during.pct(99)), fmtDur(without.pct(99)), fmtDur(post.pct(99)), t.duringWindows),
			result: verdict(r >= 0.8 && t.duringWindows > 0)}
		switch {
		case t.duringWindows == 0:
			c.result = notRun("tidy ended before a read window did")
		case c.result == missed:
			c.why = fmt.Sprintf("Tidy and the reads share raft's log (each creds read registers a lease; each removed token is a durable delete) and %d cores. %s %s", cores, paceLine(t.paces), t.costLine(cores))
		}
		return c
	}
	return []check{c10e,
		ratio("10f", "cached reads of creds/bench", t.readClients, t.without, t.during, t.post),
		ratio("10g", "reads of a KV mount (kv/bench) beside them", t.kvClients, t.kvWithout, t.kvDuring, t.kvPost),
		c10h}
}

// keyCPU is what one tidied key cost Vault and the plugin with no reads.
func (t *raftTidyResult) keyCPU() (vault, plugin time.Duration) {
	n := time.Duration(max(t.quiet.storedBefore-t.quiet.storedAfter, 1))
	return t.quietCPU.procs["Vault"] / n, t.quietCPU.procs["plugin"] / n
}

// costLine says what tidy under reads cost: CPU per key, against what
// the reads left of the cores, and what raft's log did with and without
// it (each creds read registers a lease there; each removed token is a
// durable delete).
func (t *raftTidyResult) costLine(cores int) string {
	if t.quietCPU.wall == 0 || t.withoutCPU.wall == 0 {
		return ""
	}
	vault, plugin := t.keyCPU()
	need := float64(t.busy.storedBefore) / tidyBusyLimitFor(t.busy.storedBefore).Seconds()
	share := func(rate float64) float64 { return 100 * rate * (vault + plugin).Seconds() / float64(cores) }
	line := fmt.Sprintf("With no reads a tidied key cost Vault %s and the plugin %s of CPU: %.0f keys/s (the 15-minute line) would take %.0f%% of the %d cores, which the reads alone kept %.0f%% busy (%.0f%% during tidy under reads).",
		fmtDur(vault), fmtDur(plugin), need, share(need), cores, 100*t.withoutCPU.busy, 100*t.duringCPU.busy)
	if w, d := t.withoutRaft, t.duringRaft; w.windows > 0 && d.windows > 0 {
		line += fmt.Sprintf(" Raft, by Vault's metrics: a write took %.2f ms as its request waited for it without tidy and %.2f ms during it (its commit %.2f and %.2f ms; the fsync'd log write %.2f and %.2f ms, per batch of %.1f and %.1f entries).",
			w.putMean, d.putMean, w.commit, d.commit, w.store, d.store, w.batch, d.batch)
	}
	return line
}

// paceLine says what pace tidy kept, polled each second.
func paceLine(paces []int) string {
	if len(paces) == 0 {
		return "No pace was polled."
	}
	sorted := slices.Clone(paces)
	slices.Sort(sorted)
	paced := sorted[slices.IndexFunc(append(sorted, 1), func(p int) bool { return p > 0 }):]
	line := fmt.Sprintf("Tidy's pace, polled each second (%d polls): unpaced at %d", len(paces), len(paces)-len(paced))
	if len(paced) > 0 {
		line += fmt.Sprintf(", else median %d keys/s (min %d, max %d)", paced[len(paced)/2], paced[0], paced[len(paced)-1])
	}
	return line + "."
}

func fmtMin(d time.Duration) string {
	if d >= time.Minute {
		return fmt.Sprintf("%.1f min", d.Minutes())
	}
	return d.Round(time.Second).String()
}

func phaseList(ps []phasePeak) string {
	var xs []string
	for _, p := range ps {
		xs = append(xs, fmt.Sprintf("%s %s", p.phase, mib(p.peak)))
	}
	return strings.Join(xs, ", ")
}

func tidyCallsLine(calls []tidyCall) string {
	var xs []string
	for _, c := range calls {
		xs = append(xs, c.String())
	}
	return strings.ReplaceAll(strings.Join(xs, "; "), "|", "/")
}

// manySection is scenario 10's part of the report.
func (rep *report) manySection(p func(string, ...any)) {
	m := rep.many
	if m == nil && rep.tidyRaft == nil {
		return
	}
	p("")
	p("## %d shoppers (scenario 10)", rep.opts.users)
	if m != nil {
		rep.manyInmem(p, m)
	}
	rep.tidySection(p)
}

func (rep *report) manyInmem(p func(string, ...any), m *manyResult) {
	p("")
	p("On a fresh dev server (inmem): %d distinct user ids, each written once to `creds/%s` by %d clients; the fake answers after %s and hands out tokens living %s, so tokens expire (and Vault revokes their leases) while later users are still arriving; then, once all have expired, `POST instacart/tidy` until none is stored, then the role is deleted. The plugin's RSS is sampled every 200 ms and `instacart/metrics?format=prometheus` scraped every %s throughout.",
		m.users, usersRole, m.clients, m.latency, m.lifetime, rep.opts.scrapeEvery)
	p("")
	p("| measure | value |")
	p("|---|---:|")
	p("| users served / failed | %d / %d |", m.s.ok, m.s.errs)
	p("| users/s | %.0f |", m.s.throughput())
	p("| read latency p50 / p90 / p99 / max | %s / %s / %s / %s |", fmtDur(m.s.pct(50)), fmtDur(m.s.pct(90)), fmtDur(m.s.pct(99)), fmtDur(m.s.pct(100)))
	p("| reads that started after the first token had expired | %d |", m.expiredDuringRun)
	p("| upstream token requests | %d (%.3f per user) |", m.tokenRequests, float64(m.tokenRequests)/float64(max(m.users, 1)))
	p("| plugin RSS before / after the users | %s / %s |", mib(m.rssBefore), mib(m.rssEnd))
	p("| plugin RSS peak by phase | %s |", phaseList(m.rss))
	p("| stored tokens right after the users / once all expired (waited %s) | %d / %d |", m.waited.Round(time.Second), m.storedEnd, m.storedExpired)
	for i, c := range m.tidyCalls {
		p("| `POST instacart/tidy`, call %d of %d | %s |", i+1, len(m.tidyCalls), strings.ReplaceAll(c.String(), "|", "/"))
	}
	if m.tidyTook > 0 && m.storedExpired > m.storedAfter {
		p("| tidy rate on inmem | %.0f tokens/s |", float64(m.storedExpired-m.storedAfter)/m.tidyTook.Seconds())
	}
	p("| stored tokens after tidy | %d |", m.storedAfter)
	if m.roleDeleteErr != "" {
		p("| `DELETE instacart/roles/%s` | failed: %s |", usersRole, m.roleDeleteErr)
	} else {
		p("| `DELETE instacart/roles/%s` | %s |", usersRole, fmtDur(m.roleDelete))
	}
	p("| scrapes of instacart/metrics: count / failed / slowest / largest | %d / %d / %s / %d bytes |", m.scr.n, m.scr.failed, fmtDur(m.scr.maxTook), m.scr.maxBytes)
	if m.sawGauge {
		p("| `instacart_shared_tokens{role=%q}`: peak over the scrapes / right after tidy (gauges refresh at most every minute) | %.0f / %.0f |", usersRole, m.gaugePeak, m.gaugeAfterTidy)
	} else {
		p("| `instacart_shared_tokens{role=%q}` | not in the scrape |", usersRole)
	}
	if m.s.firstErr != "" {
		p("")
		p("First failure: `%s`", compact(m.s.firstErr))
	}
	if m.scr.firstErr != "" {
		p("")
		p("First failed scrape: `%s`", compact(m.scr.firstErr))
	}
}

// tidySection is scenario 10's tidy on raft.
func (rep *report) tidySection(p func(string, ...any)) {
	t := rep.tidyRaft
	if t == nil {
		return
	}
	p("")
	p("### Tidy on raft")
	p("")
	p("On a fresh single-node raft server: one per-user token minted through the engine (living 2 s) gives a real record and its place (`%s`); %d copies of it, each for its own user id and token and expired an hour ago, are written beside it through `sys/raw` (the engine's own first tidy is due an hour after mounting, after this; minting them through leased reads would take hours on raft and leave as many leases). They are tidied with no reads. Then %d more are written and tidied while cached reads of `creds/bench` (a role-wide token, already cached) at %d clients and reads of `kv/bench` (a KV version 1 mount) at %d clients run side by side without a break, in windows of equal length; the same reads run for 4 windows before tidy and 4 after, and the reads during tidy are judged against the mean of both (the reads drift over a run: each creds read leaves a lease of the token's remaining life, so Vault holds more leases every window). Each tidy is `POST instacart/tidy`, called again whenever it answers that it goes on in the background, timed from the first call until an answer without that warning and no token left. The second pass follows the first on the same server, so tidy's pace starts from the latency it learnt with no reads.",
		t.layout, t.tokens, t.tokens, t.readClients, t.kvClients)
	p("")
	p("| measure | value |")
	p("|---|---:|")
	p("| expired tokens written / time | %d / %s (%.0f/s) |", t.tokens, t.fillTook.Round(time.Second), float64(t.tokens)/t.fillTook.Seconds())
	for _, run := range []struct {
		name  string
		r     tidyRun
		paces []int
	}{{"with no reads", t.quiet, t.quietPaces}, {"under reads", t.busy, t.paces}} {
		p("| tidy %s: stored before / after | %d / %d |", run.name, run.r.storedBefore, run.r.storedAfter)
		for i, c := range run.r.calls {
			p("| tidy %s: `POST instacart/tidy`, call %d of %d | %s |", run.name, i+1, len(run.r.calls), strings.ReplaceAll(c.String(), "|", "/"))
		}
		p("| tidy %s: took / rate | %s / %.0f tokens/s |", run.name, run.r.took.Round(time.Second), run.r.rate())
		p("| tidy %s: pace | %s |", run.name, paceLine(run.paces))
	}
	switch {
	case t.status != nil:
		var kv []string
		for _, k := range []string{"running", "tokens_checked", "expired_tokens_removed", "orphaned_tokens_removed", "paced_keys_per_second"} {
			if x, ok := t.status[k]; ok {
				kv = append(kv, fmt.Sprintf("%s=%v", k, x))
			}
		}
		p("| `GET instacart/tidy` during the pass under reads | %s |", strings.Join(kv, ", "))
	case t.statusMissing != "":
		p("| `GET instacart/tidy` during the pass under reads | not available (%s) |", t.statusMissing)
	}
	for _, rd := range []struct {
		name                  string
		without, during, post sample
	}{{fmt.Sprintf("cached creds reads (%d clients)", t.readClients), t.without, t.during, t.post}, {fmt.Sprintf("kv reads (%d clients)", t.kvClients), t.kvWithout, t.kvDuring, t.kvPost}} {
		p("| %s without tidy: reads/s, p50 / p99 | %.0f, %s / %s |", rd.name, rd.without.throughput(), fmtDur(rd.without.pct(50)), fmtDur(rd.without.pct(99)))
		p("| %s during tidy (%d windows): reads/s, p50 / p99 | %.0f, %s / %s |", rd.name, t.duringWindows, rd.during.throughput(), fmtDur(rd.during.pct(50)), fmtDur(rd.during.pct(99)))
		p("| %s after tidy: reads/s, p50 / p99 | %.0f, %s / %s |", rd.name, rd.post.throughput(), fmtDur(rd.post.pct(50)), fmtDur(rd.post.pct(99)))
		p("| %s errors without / during / after | %d / %d / %d |", rd.name, rd.without.errs, rd.during.errs, rd.post.errs)
	}
	if t.quietCPU.wall > 0 {
		vault, plugin := t.keyCPU()
		p("| CPU per tidied key with no reads: Vault / plugin | %s / %s |", fmtDur(vault), fmtDur(plugin))
		p("| cores busy: tidy with no reads / reads without tidy / tidy under reads | %.0f%% / %.0f%% / %.0f%% |", 100*t.quietCPU.busy, 100*t.withoutCPU.busy, 100*t.duringCPU.busy)
	}
	for _, rs := range []struct {
		name string
		r    raftStats
	}{{"reads without tidy", t.withoutRaft}, {"tidy under reads", t.duringRaft}} {
		if rs.r.windows > 0 {
			p("| raft during %s (Vault's metrics, %s): write wait / commit / fsync'd log write / entries per batch | %.2f ms / %.2f ms / %.2f ms / %.1f |", rs.name, rs.r.span, rs.r.putMean, rs.r.commit, rs.r.store, rs.r.batch)
		}
	}
	p("| plugin RSS peak by phase | %s |", phaseList(t.rss))
	p("| scrapes of instacart/metrics: count / failed / slowest | %d / %d / %s |", t.scr.n, t.scr.failed, fmtDur(t.scr.maxTook))
}
