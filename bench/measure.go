package main

// Where the time goes, without a profiler in the plugin: CPU time per
// process from /proc, and the raft storage timings Vault itself keeps
// (sys/metrics).

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc CPU times (100 on Linux).
const clockTicks = 100

// cpuSnap is the CPU time used so far, system-wide and by named processes.
type cpuSnap struct {
	at          time.Time
	busy, total int64            // system-wide ticks, all cores
	procs       map[string]int64 // ticks (user + system) per name
}

// cpuUse is what was used between two snapshots.
type cpuUse struct {
	wall  time.Duration
	busy  float64                  // fraction of all cores' time not idle
	procs map[string]time.Duration // CPU time per process
}

func readCPU(procs map[string]int) cpuSnap {
	s := cpuSnap{at: time.Now(), procs: map[string]int64{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, x := range f[1:] {
			n, _ := strconv.ParseInt(x, 10, 64)
			if i >= 8 { // guest time is already in user time
				break
			}
			s.total += n
			if i != 3 && i != 4 { // idle, iowait
				s.busy += n
			}
		}
	}
	for name, pid := range procs {
		s.procs[name] = procTicks(pid)
	}
	return s
}

// procTicks is utime + stime of pid.
func procTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, ok := strings.Cut(string(b), ") ") // the command may hold spaces
	if !ok {
		return 0
	}
	f := strings.Fields(rest) // f[0] is field 3 (state): utime is field 14
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func (s cpuSnap) since(from cpuSnap) cpuUse {
	u := cpuUse{wall: s.at.Sub(from.at), procs: map[string]time.Duration{}}
	if t := s.total - from.total; t > 0 {
		u.busy = float64(s.busy-from.busy) / float64(t)
	}
	for name, n := range s.procs {
		u.procs[name] = time.Duration(n-from.procs[name]) * time.Second / clockTicks
	}
	return u
}

// names lists the processes by CPU time used, most first.
func (u cpuUse) names() []string {
	var ns []string
	for n := range u.procs {
		ns = append(ns, n)
	}
	sort.Slice(ns, func(i, j int) bool { return u.procs[ns[i]] > u.procs[ns[j]] })
	return ns
}

// raftStats sums what Vault's own metrics say about raft storage over a run:
// its in-memory sink keeps 10-second intervals, polled and deduplicated.
type raftStats struct {
	windows int           // 10 s intervals seen
	span    time.Duration // their total length
	puts    int           // raft storage writes (vault.raft-storage.put)
	putMean float64       // ms per write, as the request sees it
	commit  float64       // ms from append to commit (vault.raft.commitTime)
	store   float64       // ms per batch written to the log with fsync (vault.raft.boltdb.storeLogs)
	batch   float64       // mean log entries per fsync (vault.raft.boltdb.logsPerBatch)
}

type raftMetrics struct {
	v     *vault
	start time.Time
	mu    sync.Mutex
	seen  map[string]map[string][2]float64 // interval -> metric -> count, sum
	stop  chan struct{}
	done  chan struct{}
}

var raftMetricNames = []string{"vault.raft-storage.put", "vault.raft.commitTime", "vault.raft.boltdb.storeLogs", "vault.raft.boltdb.logsPerBatch"}

func startRaftMetrics(v *vault) *raftMetrics {
	m := &raftMetrics{v: v, start: time.Now(), seen: map[string]map[string][2]float64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(4 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.poll()
			}
		}
	}()
	return m
}

// metricsInterval is the length of Vault's in-memory metrics intervals.
const metricsInterval = 10 * time.Second

// poll reads the last complete interval of Vault's in-memory metrics.
func (m *raftMetrics) poll() {
	var out struct {
		Timestamp string `json:"Timestamp"`
		Samples   []struct {
			Name  string  `json:"Name"`
			Count float64 `json:"Count"`
			Sum   float64 `json:"Sum"`
		} `json:"Samples"`
	}
	if err := m.v.Must(http.MethodGet, "sys/metrics", nil, &out); err != nil {
		return
	}
	// Only intervals wholly inside the measurement count.
	if at, err := time.Parse("2006-01-02 15:04:05 -0700 MST", out.Timestamp); err != nil || at.Before(m.start) || at.Add(metricsInterval).After(time.Now()) {
		return
	}
	got := map[string][2]float64{}
	for _, s := range out.Samples {
		for _, n := range raftMetricNames {
			if s.Name == n {
				got[n] = [2]float64{s.Count, s.Sum}
			}
		}
	}
	m.mu.Lock()
	m.seen[out.Timestamp] = got
	m.mu.Unlock()
}

func (m *raftMetrics) finish() raftStats {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	sum := map[string][2]float64{}
	for _, got := range m.seen {
		for n, cs := range got {
			a := sum[n]
			sum[n] = [2]float64{a[0] + cs[0], a[1] + cs[1]}
		}
	}
	mean := func(n string) float64 {
		if sum[n][0] == 0 {
			return 0
		}
		return sum[n][1] / sum[n][0]
	}
	return raftStats{windows: len(m.seen), span: time.Duration(len(m.seen)) * metricsInterval, puts: int(sum["vault.raft-storage.put"][0]),
		putMean: mean("vault.raft-storage.put"), commit: mean("vault.raft.commitTime"), store: mean("vault.raft.boltdb.storeLogs"), batch: mean("vault.raft.boltdb.logsPerBatch")}
}

// cpuProfile is a CPU profile of the Vault server taken through its own
// sys/pprof endpoint, summarised by `go tool pprof`.
type cpuProfile struct {
	took     time.Duration
	top, cum string // `go tool pprof -top` output, by own and by cumulative time
	err      string
}

// profileVault starts, after delay, a CPU profile of Vault over d, written to
// file; wait for the result on the returned channel.
func profileVault(ctx context.Context, v *vault, delay, d time.Duration, file string) <-chan cpuProfile {
	return profileURL(ctx, v.Client, fmt.Sprintf("%s/v1/sys/pprof/profile?seconds=%d", v.Addr, int(d/time.Second)), v.Token, v.Redact, delay, file)
}

// profileURL fetches a CPU profile from url (with token, when set) after
// delay, writes it to file and summarises it.
func profileURL(ctx context.Context, client *http.Client, url, token string, redact func(string) string, delay time.Duration, file string) <-chan cpuProfile {
	ch := make(chan cpuProfile, 1)
	go func() {
		var p cpuProfile
		defer func() { ch <- p }()
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			p.err = ctx.Err().Error()
			return
		}
		t0 := time.Now()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			p.err = err.Error()
			return
		}
		if token != "" {
			req.Header.Set("X-Vault-Token", token)
		}
		resp, err := client.Do(req)
		if err != nil {
			p.err = redact(err.Error())
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			p.err = fmt.Sprintf("CPU profile: HTTP %d", resp.StatusCode)
			return
		}
		out, err := os.Create(file)
		if err != nil {
			p.err = err.Error()
			return
		}
		_, err = io.Copy(out, resp.Body)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			p.err = err.Error()
			return
		}
		p.took = time.Since(t0)
		for _, x := range []struct {
			out  *string
			args []string
		}{{&p.top, []string{"-top", "-nodecount=30"}}, {&p.cum, []string{"-top", "-cum", "-nodecount=150"}}} {
			b, err := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, x.args...), file)...).Output()
			if err != nil {
				p.err = "go tool pprof: " + err.Error()
				return
			}
			*x.out = string(b)
		}
	}()
	return ch
}
