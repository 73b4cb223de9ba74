package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// rssSampler tracks the peak resident memory of our plugin under load.
type rssSampler struct {
	pid  int
	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

// pluginPID is the process of our plugin under this runner's Vault.
func (r *runner) pluginPID() (int, error) {
	return findPluginPID(filepath.Join(r.bins.pluginDir, pluginName), r.vault.Proc.Pid())
}

func startRSSSampler(pid int) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if n, err := stack.RSSBytes(pid); err == nil {
				s.mu.Lock()
				s.peak = max(s.peak, n)
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

func (s *rssSampler) finish() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

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
