package main

// Scraping instacart/metrics every interval during a run, as Prometheus would.

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// scrapes is what scraping instacart/metrics every interval saw.
type scrapes struct {
	n, failed int
	maxTook   time.Duration
	maxBytes  int
	firstErr  string
	// instacart_shared_tokens{role=usersRole}: the highest value seen, and
	// the value at the last scrape that had the series (a role delete drops
	// it).
	peakShared, lastShared float64
	sawShared              bool
}

type scraper struct {
	mu   sync.Mutex
	res  scrapes
	stop chan struct{}
	done chan struct{}
}

// startScraper GETs /v1/instacart/metrics?format=prometheus every interval,
// as Prometheus scrapes (examples/prometheus), with the loader's transport.
func (r *runner) startScraper(every time.Duration) *scraper {
	s := &scraper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.scrape(r)
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *scraper) scrape(r *runner) {
	t0 := time.Now()
	req, err := http.NewRequest(http.MethodGet, r.url("instacart/metrics?format=prometheus"), nil)
	if err != nil {
		return
	}
	req.Header.Set("X-Vault-Token", r.vault.Token)
	resp, err := r.load.client.Do(req)
	var body []byte
	status := 0
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	took := time.Since(t0)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.n++
	s.res.maxTook = max(s.res.maxTook, took)
	s.res.maxBytes = max(s.res.maxBytes, len(body))
	if err != nil || status != http.StatusOK {
		s.res.failed++
		if s.res.firstErr == "" {
			if err != nil {
				s.res.firstErr = r.vault.Redact(err.Error())
			} else {
				s.res.firstErr = fmt.Sprintf("HTTP %d", status)
			}
		}
		return
	}
	total, seen := 0.0, false
	for k, x := range parseProm(string(body)) {
		if strings.HasPrefix(k, "instacart_shared_tokens") && strings.Contains(k, `role="`+usersRole+`"`) {
			total, seen = total+x, true
		}
	}
	if seen {
		s.res.lastShared, s.res.sawShared = total, true
		s.res.peakShared = max(s.res.peakShared, total)
	}
}

// now is one scrape at once; what the gauge said.
func (s *scraper) now(r *runner) (float64, bool) {
	s.scrape(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res.lastShared, s.res.sawShared
}

func (s *scraper) finish(r *runner) scrapes {
	close(s.stop)
	<-s.done
	s.scrape(r) // one last, after everything
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res
}
