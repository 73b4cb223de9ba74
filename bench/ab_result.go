package main

import (
	"bytes"
	"fmt"
	"time"
)

// abResult holds, per target and concurrency, one sample per round.
type abResult struct {
	targets []target
	conc    []int
	samples map[string]map[int][]sample
}

// ratio is the median over rounds of a(target)/b(target) for one metric.
func (a *abResult) ratio(num, den string, c int, metric func(sample) float64) (float64, bool) {
	sn, sd := a.samples[num][c], a.samples[den][c]
	if len(sn) == 0 || len(sn) != len(sd) {
		return 0, false
	}
	var rs []float64
	for i := range sn {
		if d := metric(sd[i]); d > 0 {
			rs = append(rs, metric(sn[i])/d)
		}
	}
	if len(rs) == 0 {
		return 0, false
	}
	return median(rs), true
}

func thr(s sample) float64 { return s.throughput() }

func p99(s sample) float64 { return float64(s.pct(99)) }

// stat is the median over rounds of one target's metrics at one concurrency.
type stat struct {
	thr           float64
	p50, p90, p99 time.Duration
	errs          int
}

func (a *abResult) stat(key string, c int) (stat, bool) {
	ss := a.samples[key][c]
	if len(ss) == 0 {
		return stat{}, false
	}
	var st stat
	var ts []float64
	var d50, d90, d99 []time.Duration
	for _, s := range ss {
		ts = append(ts, s.throughput())
		d50, d90, d99 = append(d50, s.pct(50)), append(d90, s.pct(90)), append(d99, s.pct(99))
		st.errs += s.errs
	}
	st.thr, st.p50, st.p90, st.p99 = median(ts), medianDur(d50), medianDur(d90), medianDur(d99)
	return st, true
}

func (a *abResult) summaryLine(c int) string {
	var b bytes.Buffer
	for _, t := range a.targets {
		if st, ok := a.stat(t.key, c); ok {
			fmt.Fprintf(&b, "%s %.0f/s p99 %s; ", t.key, st.thr, fmtDur(st.p99))
		}
	}
	return b.String()
}
