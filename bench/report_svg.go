package main

import (
	"fmt"
	"html"
	"strings"
	"time"
)

// svg draws grouped bar charts (throughput, p99) by concurrency, one bar per
// target: the inmem server with the exclusive-mint role, then the raft
// server with reads through Vault Proxy. Hand-written: no dependencies.
func (rep *report) svg() string {
	type series struct {
		label, color string
		thr          map[int]float64
		p99          map[int]float64
	}
	colors := map[string]string{tOursCold: "#2f6fde", tFloor: "#7a7a7a", tInstacart: "#2f6fde", tNoop: "#7a7a7a", tNoopPlain: "#b5b5b5", tOauthapp: "#e0892b", tKV: "#3a9a5b", "excl": "#b03a8c", tProxy: "#17a2b8"}
	fromAB := func(ab *abResult) []series {
		var ss []series
		for _, t := range ab.targets {
			if t.skip != "" {
				continue
			}
			s := series{label: t.label, color: colors[t.key], thr: map[int]float64{}, p99: map[int]float64{}}
			for _, c := range ab.conc {
				st, _ := ab.stat(t.key, c)
				s.thr[c], s.p99[c] = st.thr, float64(st.p99)/float64(time.Millisecond)
			}
			ss = append(ss, s)
		}
		return ss
	}
	type section struct {
		name string
		conc []int
		ss   []series
	}
	var secs []section
	if rep.ab != nil {
		ss := fromAB(rep.ab)
		ex := series{label: "instacart/creds/bench-excl (mint)", color: colors["excl"], thr: map[int]float64{}, p99: map[int]float64{}}
		for _, e := range rep.excl {
			ex.thr[e.conc], ex.p99[e.conc] = e.s.throughput(), float64(e.s.pct(99))/float64(time.Millisecond)
		}
		secs = append(secs, section{"inmem (dev server)", rep.ab.conc, append(ss, ex)})
	}
	if rep.raftAB != nil {
		secs = append(secs, section{"raft (integrated storage)", rep.raftAB.conc, fromAB(rep.raftAB)})
	}
	for _, fr := range rep.floor {
		secs = append(secs, section{"cold per-user read vs the mint floor, " + fr.storage, fr.ab.conc, fromAB(fr.ab)})
	}

	const (
		width, panelH, left, right = 960, 220, 60, 20
		gap                        = 60
	)
	// Legend: every series once, wrapped to the chart width.
	var legend []series
	seen := map[string]bool{}
	for _, sec := range secs {
		for _, s := range sec.ss {
			if !seen[s.label] {
				seen[s.label] = true
				legend = append(legend, s)
			}
		}
	}
	var lb strings.Builder
	x, y := left, 30
	for _, s := range legend {
		w := 14 + 6*len(s.label) + 16 // ~6px per character at 11px
		if x+w > width-right {
			x, y = left, y+16
		}
		fmt.Fprintf(&lb, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, y, s.color, x+14, y+9, html.EscapeString(s.label))
		x += w
	}
	top := y + 50
	height := top + len(secs)*2*(panelH+gap) + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(fmt.Sprintf("vault-plugin-secrets-instacart benchmark — %s, %d cores, Vault %s (%s)", rep.machine.cpu, rep.machine.cores, rep.machine.vaultVersion, runMode(rep.opts))))
	b.WriteString(lb.String())
	panel := func(y0 int, title string, conc []int, ss []series, val func(series, int) float64, unit string) {
		maxV := 0.0
		for _, s := range ss {
			for _, c := range conc {
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
		groupW := float64(plotW) / float64(len(conc))
		barW := (groupW - 20) / float64(len(ss))
		for gi, c := range conc {
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
	y0 := top
	for _, sec := range secs {
		panel(y0, sec.name+": throughput (requests/s, median over rounds) by concurrent clients", sec.conc, sec.ss, func(s series, c int) float64 { return s.thr[c] }, "req/s")
		y0 += panelH + gap
		panel(y0, sec.name+": p99 latency (ms, median over rounds) by concurrent clients", sec.conc, sec.ss, func(s series, c int) float64 { return s.p99[c] }, "ms")
		y0 += panelH + gap
	}
	b.WriteString("</svg>\n")
	return b.String()
}
