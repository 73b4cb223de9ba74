package main

import (
	"fmt"
	"html"
	"math"
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
	ab                         *abResult
	cold                       *coldResult
	excl                       []exclResult
	leases                     *leaseResult
	rssIdle, rssPeak, rssAfter int64
}

const (
	met    = "met"
	missed = "**missed**"
)

// check is one row of the targets table.
type check struct {
	id, target, measured, result string
}

func verdict(ok bool) string {
	if ok {
		return met
	}
	return missed
}

func notRun(reason string) string { return "not run (" + reason + ")" }

func (rep *report) checks() []check {
	var cs []check
	ab := rep.ab
	// 1: cached read vs the no-op leased read, at every concurrency.
	minThr, maxP99 := math.Inf(1), 0.0
	var at1, at2 int
	for _, c := range ab.conc {
		if r, ok := ab.ratio(tInstacart, tNoop, c, thr); ok && r < minThr {
			minThr, at1 = r, c
		}
		if r, ok := ab.ratio(tInstacart, tNoop, c, p99); ok && r > maxP99 {
			maxP99, at2 = r, c
		}
	}
	cs = append(cs,
		check{"1a", "cached read throughput ≥ 0.95× no-op leased read, every concurrency", fmt.Sprintf("worst %.2f× (c=%d)", minThr, at1), verdict(minThr >= 0.95)},
		check{"1b", "cached read p99 ≤ 1.2× no-op leased read, every concurrency", fmt.Sprintf("worst %.2f× (c=%d)", maxP99, at2), verdict(maxP99 <= 1.2)})
	// 2: vs oauthapp's cached self/ read.
	if rep.oauthappSkip != "" {
		cs = append(cs, check{"2", "cached read throughput ≥ 1.5× oauthapp's cached read, every concurrency", "—", notRun(rep.oauthappSkip)})
	} else {
		minO := math.Inf(1)
		var atO int
		for _, c := range ab.conc {
			if r, ok := ab.ratio(tInstacart, tOauthapp, c, thr); ok && r < minO {
				minO, atO = r, c
			}
		}
		cs = append(cs, check{"2", "cached read throughput ≥ 1.5× oauthapp's cached read, every concurrency", fmt.Sprintf("worst %.2f× (c=%d)", minO, atO), verdict(minO >= 1.5)})
	}
	// 3: cold start.
	okCold := true
	for i := range rep.cold.mints {
		okCold = okCold && rep.cold.mints[i] == 1 && rep.cold.distinct[i] == 1 && rep.cold.failed[i] == 0
	}
	cs = append(cs, check{"3", fmt.Sprintf("cold start: exactly 1 mint for %d concurrent readers", rep.cold.readers),
		fmt.Sprintf("mints %v, distinct tokens %v, failed reads %v", rep.cold.mints, rep.cold.distinct, rep.cold.failed), verdict(okCold)})
	// 4: exclusive.
	okExcl, reads, reqs := true, 0, 0
	for _, e := range rep.excl {
		okExcl = okExcl && e.tokenRequests == e.s.ok && e.s.errs == 0
		reads, reqs = reads+e.s.ok, reqs+e.tokenRequests
	}
	perRead := 0.0
	if reads > 0 {
		perRead = float64(reqs) / float64(reads)
	}
	cs = append(cs, check{"4", "exclusive role: 1 upstream token request per read", fmt.Sprintf("%.3f (%d requests / %d reads)", perRead, reqs, reads), verdict(okExcl && reads > 0)})
	// 5: lease volume.
	l := rep.leases
	if l.agentSkip != "" {
		cs = append(cs, check{"5", fmt.Sprintf("through Vault Agent: %d reads → 1 lease", l.reads), fmt.Sprintf("direct: %d leases", l.direct), notRun(l.agentSkip)})
	} else {
		cs = append(cs, check{"5", fmt.Sprintf("through Vault Agent: %d reads → 1 lease", l.reads),
			fmt.Sprintf("%d lease(s) via Agent (%d errors); %d leases direct", l.viaAgent, l.agentErrs, l.direct), verdict(l.viaAgent == 1 && l.agentErrs == 0)})
	}
	// 6: memory.
	cs = append(cs,
		check{"6a", "plugin RSS idle < 40 MiB", mib(rep.rssIdle), verdict(rep.rssIdle < 40<<20)},
		check{"6b", "plugin RSS under load < 60 MiB", fmt.Sprintf("peak %s (after: %s)", mib(rep.rssPeak), mib(rep.rssAfter)), verdict(rep.rssPeak < 60<<20)})
	return cs
}

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
	p("Connect fake latency %s per token request; %d round(s) × %s per target and concurrency, target order rotated each round; one shared keep-alive HTTP transport; client, Vault and plugins share the same cores. Total run %s.",
		rep.opts.latency, rep.opts.rounds, rep.opts.duration, rep.elapsed.Round(time.Second))
	p("")
	p("## Targets")
	p("")
	p("| # | target | measured | result |")
	p("|---|---|---|---|")
	for _, c := range rep.checks() {
		p("| %s | %s | %s | %s |", c.id, c.target, c.measured, c.result)
	}
	p("")
	p("## Cached reads (scenarios 1–2, medians over rounds)")
	p("")
	p("Ratios are medians of per-round ratios instacart ÷ target (throughput: higher is better for us; p99: lower is better for us).")
	p("")
	p("| clients | target | req/s | p50 | p90 | p99 | errors | thr ratio | p99 ratio |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range rep.ab.conc {
		for _, t := range rep.ab.targets {
			if t.skip != "" {
				continue
			}
			st, _ := rep.ab.stat(t.key, c)
			tr, pr := "—", "—"
			if t.key != tInstacart {
				if r, ok := rep.ab.ratio(tInstacart, t.key, c, thr); ok {
					tr = fmt.Sprintf("%.2f×", r)
				}
				if r, ok := rep.ab.ratio(tInstacart, t.key, c, p99); ok {
					pr = fmt.Sprintf("%.2f×", r)
				}
			}
			p("| %d | %s | %.0f | %s | %s | %s | %d | %s | %s |", c, t.label, st.thr, fmtDur(st.p50), fmtDur(st.p90), fmtDur(st.p99), st.errs, tr, pr)
		}
	}
	for _, t := range rep.ab.targets {
		if t.skip != "" {
			p("")
			p("%s: not run (%s).", t.label, t.skip)
		}
	}
	p("")
	p("oauthapp's `self/` read returns unleased data, so it skips Vault's lease bookkeeping that ours (and noop/leased) pay for; noop/unleased shows that cost.")
	p("")
	p("## Cold start (scenario 3)")
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
	p("## Exclusive mints (scenario 4, one run per concurrency)")
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
	p("## Lease volume (scenario 5)")
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
	p("## Plugin memory (scenario 6)")
	p("")
	p("VmRSS of the plugin process: idle %s, peak during cached reads %s, after %s.", mib(rep.rssIdle), mib(rep.rssPeak), mib(rep.rssAfter))
	if rep.opts.smoke {
		p("")
		p("Smoke run: numbers are not meaningful; oauthapp and Vault Agent were skipped.")
	}
	return b.String()
}

func runMode(o options) string {
	if o.smoke {
		return "smoke run"
	}
	return "full run"
}

// svg draws two grouped bar charts (throughput, p99) by concurrency, one bar
// per target, plus the exclusive-mint role. Hand-written: no dependencies.
func (rep *report) svg() string {
	type series struct {
		label, color string
		thr          map[int]float64
		p99          map[int]float64
	}
	colors := []string{"#2f6fde", "#7a7a7a", "#b5b5b5", "#e0892b", "#3a9a5b", "#b03a8c"}
	var ss []series
	for i, t := range rep.ab.targets {
		if t.skip != "" {
			continue
		}
		s := series{label: t.label, color: colors[i%len(colors)], thr: map[int]float64{}, p99: map[int]float64{}}
		for _, c := range rep.ab.conc {
			st, _ := rep.ab.stat(t.key, c)
			s.thr[c], s.p99[c] = st.thr, float64(st.p99)/float64(time.Millisecond)
		}
		ss = append(ss, s)
	}
	ex := series{label: "instacart/creds/bench-excl (mint)", color: colors[5], thr: map[int]float64{}, p99: map[int]float64{}}
	for _, e := range rep.excl {
		ex.thr[e.conc], ex.p99[e.conc] = e.s.throughput(), float64(e.s.pct(99))/float64(time.Millisecond)
	}
	ss = append(ss, ex)

	const (
		width, panelH, top, left, right = 960, 240, 90, 60, 20
		gap                             = 60
	)
	height := top + 2*panelH + gap + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(fmt.Sprintf("vault-plugin-secrets-instacart benchmark — %s, %d cores, Vault %s (%s)", rep.machine.cpu, rep.machine.cores, rep.machine.vaultVersion, runMode(rep.opts))))
	// Legend, wrapped to the chart width.
	x, y := left, 30
	for _, s := range ss {
		w := 14 + 6*len(s.label) + 16 // ~6px per character at 11px
		if x+w > width-right {
			x, y = left, y+16
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, y, s.color, x+14, y+9, html.EscapeString(s.label))
		x += w
	}
	panel := func(y0 int, title string, val func(series, int) float64, unit string) {
		maxV := 0.0
		for _, s := range ss {
			for _, c := range rep.ab.conc {
				maxV = max(maxV, val(s, c))
			}
		}
		if maxV == 0 {
			maxV = 1
		}
		plotW := width - left - right
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", left, y0-6, html.EscapeString(title))
		// Axis: zero, half and the maximum, with faint grid lines.
		for _, frac := range []float64{0, 0.5, 1} {
			gy := float64(y0+panelH) - frac*float64(panelH)
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left, gy, left+plotW, gy, left-4, gy+4, frac*maxV)
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, y0+panelH, left+plotW, y0+panelH)
		groupW := float64(plotW) / float64(len(rep.ab.conc))
		barW := (groupW - 20) / float64(len(ss))
		for gi, c := range rep.ab.conc {
			gx := float64(left) + float64(gi)*groupW + 10
			for si, s := range ss {
				v := val(s, c)
				h := float64(panelH) * v / maxV
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s, %d clients: %.1f %s</title></rect>`+"\n",
					gx+float64(si)*barW, float64(y0+panelH)-h, barW-2, h, s.color, html.EscapeString(s.label), c, v, unit)
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d clients</text>`+"\n", gx+(groupW-20)/2, y0+panelH+14, c)
		}
	}
	panel(top, "Throughput (requests/s, median over rounds) by concurrent clients", func(s series, c int) float64 { return s.thr[c] }, "req/s")
	panel(top+panelH+gap, "p99 latency (ms, median over rounds) by concurrent clients", func(s series, c int) float64 { return s.p99[c] }, "ms")
	b.WriteString("</svg>\n")
	return b.String()
}
