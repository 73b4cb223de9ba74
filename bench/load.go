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
	"sync/atomic"
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
	return l.do(ctx, http.MethodGet, url, nil, body)
}

// do sends one request (with a JSON payload when non-nil) and reports
// whether it returned 200; body is filled when non-nil.
func (l *loader) do(ctx context.Context, method, url string, payload []byte, body *bytes.Buffer) (bool, string) {
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return false, err.Error()
	}
	if l.token != "" {
		req.Header.Set("X-Vault-Token", l.token)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
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

// put writes a JSON payload and reports whether Vault answered 200 or 204.
func (l *loader) put(ctx context.Context, url string, payload []byte) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(payload))
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("X-Vault-Token", l.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return false, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	return true, ""
}

// run keeps conc workers reading url for d (or, with n > 0, until n reads in
// total have been made) and measures every request.
func (l *loader) run(ctx context.Context, url string, conc int, d time.Duration, n int) sample {
	return runEach(ctx, conc, d, n, func(ctx context.Context, _ int) (bool, string) { return l.get(ctx, url, nil) })
}

// runEach keeps conc workers calling op for d (or, with n > 0, until op has
// been called n times in total) and measures every call. op gets the call's
// index, 0, 1, 2, ... across all workers (e.g. to pick a distinct user).
func runEach(ctx context.Context, conc int, d time.Duration, n int, op func(ctx context.Context, i int) (bool, string)) sample {
	var (
		mu   sync.Mutex
		s    sample
		wg   sync.WaitGroup
		next atomic.Int64
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			var errs int
			var firstErr string
			for ctx.Err() == nil && (n > 0 || time.Now().Before(deadline)) {
				i := int(next.Add(1) - 1)
				if n > 0 && i >= n {
					break
				}
				t0 := time.Now()
				ok, msg := op(ctx, i)
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
