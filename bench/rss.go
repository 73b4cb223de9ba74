package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// pluginPID is the process of our plugin under this runner's Vault.
func (r *runner) pluginPID() (int, error) {
	return findPluginPID(filepath.Join(r.bins.pluginDir, pluginName), r.vault.Proc.Pid())
}

// startRSSSampler samples the plugin's RSS through a whole run: one phase.
func startRSSSampler(pid int) *phasedRSS { return startPhasedRSS(pid, "run") }

func pidSelf() int { return os.Getpid() }

// pluginPprofURL is the pprof address a plugin built from ./bench/profplugin
// wrote beside its binary; empty for any other build.
func (r *runner) pluginPprofURL(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("%s.pprof-%d", filepath.Join(r.bins.pluginDir, pluginName), pid))
	if err != nil {
		return ""
	}
	return string(b)
}

func mkdir(dir string) error { return os.MkdirAll(dir, 0o700) }

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
