package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// loader sends reads through one shared keep-alive transport, so no target
// pays for connection set-up that another does not.
type loader struct {
	client *http.Client
	token  string // X-Vault-Token; empty through Vault Agent's auto-auth proxy
}

func newLoader(token string) *loader {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 512
	tr.MaxIdleConnsPerHost = 256 // > the highest concurrency: every worker keeps its connection
	tr.IdleConnTimeout = 90 * time.Second
	return &loader{client: &http.Client{Transport: tr, Timeout: 60 * time.Second}, token: token}
}

// sample is one timed run of one target at one concurrency.
type sample struct {
	ok, errs int
	elapsed  time.Duration
	lat      []time.Duration // successful requests, sorted
	firstErr string
}

func (s sample) throughput() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.ok) / s.elapsed.Seconds()
}

// pct is the p-th percentile (0..100) of successful request latencies.
func (s sample) pct(p float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(float64(len(s.lat))*p/100+0.5) - 1
	return s.lat[min(max(i, 0), len(s.lat)-1)]
}

// get does one read and reports whether it returned 200; body is filled when
// non-nil (the cold-start scenario compares tokens).
func (l *loader) get(ctx context.Context, url string, body *bytes.Buffer) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	if l.token != "" {
		req.Header.Set("X-Vault-Token", l.token)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Error bodies from Vault carry messages, never secrets; keep them short.
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return false, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	if body != nil {
		_, err = io.Copy(body, resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return false, err.Error()
	}
	return true, ""
}

// run keeps conc workers reading url for d (or, with n > 0, until n reads in
// total have been made) and measures every request.
func (l *loader) run(ctx context.Context, url string, conc int, d time.Duration, n int) sample {
	var (
		mu      sync.Mutex
		s       sample
		wg      sync.WaitGroup
		counter = make(chan struct{}, max(n, 1))
	)
	for range n {
		counter <- struct{}{}
	}
	deadline := time.Now().Add(d)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			var errs int
			var firstErr string
			// more reports whether this worker should make another request.
			more := func() bool {
				if ctx.Err() != nil {
					return false
				}
				if n > 0 {
					select {
					case <-counter:
						return true
					default:
						return false
					}
				}
				return time.Now().Before(deadline)
			}
			for more() {
				t0 := time.Now()
				ok, msg := l.get(ctx, url, nil)
				if ok {
					lat = append(lat, time.Since(t0))
				} else {
					errs++
					if firstErr == "" {
						firstErr = msg
					}
				}
			}
			mu.Lock()
			s.lat = append(s.lat, lat...)
			s.ok += len(lat)
			s.errs += errs
			if s.firstErr == "" {
				s.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.elapsed = time.Since(start)
	slices.Sort(s.lat)
	return s
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}
