//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const (
	scaleUsers   = 20_000
	scaleClients = 32
	// scaleLifetime is how long the fake's tokens live: short, so all of
	// them have expired soon after the last read, and the tidy calls begin
	// before Vault's first rollback tick, a minute after it started (see
	// firstRollbackTick): reads at 500 users/s leave ~10 s to spare.
	scaleLifetime = 8 * time.Second
	// scaleRSSLimit is the plugin's peak resident memory allowed while
	// 20,000 users read (issue 20).
	scaleRSSLimit = 64 << 20
)

// TestScale20kUsers: 20,000 distinct users read creds/<assertion role> once
// each, 32 at a time over keep-alive connections, with tokens that live
// seconds. Every read succeeds, each user costs exactly one token request at
// Connect, the plugin stays under 64 MiB resident throughout, the metrics
// answer during the run and count what happened, and once every token has
// expired, tidy removes exactly the 20,000 from storage: none is left under
// either token layout.
func TestScale20kUsers(t *testing.T) {
	start := time.Now()
	f := startFake(t, scaleLifetime)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/shoppers", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=shopper-*")
	pid := pluginChildPID(t, v, filepath.Join(pluginDir, pluginFile(oldVersion)))
	check(t, f.Reset()) // the config's verify token is not a user's
	users := make([]string, scaleUsers)
	for i := range users {
		users[i] = fmt.Sprintf("shopper-%07d", i)
	}

	rss := sampleRSS(pid, 100*time.Millisecond)
	t.Cleanup(func() { rss.finish() })
	// Scrapes during the run, as Prometheus would make them.
	stopScrapes := make(chan struct{})
	var scrapes []float64 // instacart_shared_tokens{role="shoppers"} seen
	var scrapeErrs []error
	var scraping sync.WaitGroup
	scraping.Add(1)
	go func() {
		defer scraping.Done()
		client := keepAliveClient(1)
		defer client.CloseIdleConnections()
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopScrapes:
				return
			case <-tick.C:
			}
			m, err := scrapeMetricsErr(v, client)
			if err != nil {
				scrapeErrs = append(scrapeErrs, err)
				continue
			}
			scrapes = append(scrapes, sharedTokensGauge(m, "shoppers"))
		}
	}()

	readStart := time.Now()
	got, failed, firstErr := readManyUsers(v, "shoppers", users, scaleClients)
	readTook := time.Since(readStart)
	close(stopScrapes)
	scraping.Wait()
	readsPeak := rss.peak.Load()

	t.Logf("%d users read by %d clients in %s (%.0f users/s), %d failed", scaleUsers, scaleClients, readTook.Round(time.Millisecond), float64(scaleUsers)/readTook.Seconds(), failed)
	t.Logf("plugin RSS: peak %s during the reads (limit %s)", mib(readsPeak), mib(scaleRSSLimit))
	if failed != 0 {
		t.Errorf("%d of %d reads failed; the first: %v", failed, scaleUsers, firstErr)
	}
	st := f.Stats(t)
	if st.Requests[pathToken] != scaleUsers || st.Mints != scaleUsers {
		t.Errorf("Connect received %d token requests and minted %d tokens, want exactly %d of each: one per user", st.Requests[pathToken], st.Mints, scaleUsers)
	}
	distinct := map[string]bool{}
	var lastExpiry time.Time
	for _, c := range got {
		if c.token != "" {
			distinct[c.token] = true
		}
		if c.expiresAt.After(lastExpiry) {
			lastExpiry = c.expiresAt
		}
	}
	if len(distinct) != scaleUsers-failed {
		t.Errorf("%d distinct tokens for %d successful reads: users shared a token", len(distinct), scaleUsers-failed)
	}
	if len(scrapeErrs) > 0 {
		t.Errorf("%d of %d scrapes during the run failed; the first: %v", len(scrapeErrs), len(scrapeErrs)+len(scrapes), scrapeErrs[0])
	}
	if len(scrapes) == 0 && readTook > 3*time.Second {
		t.Error("no scrape of instacart/metrics during the run")
	}
	for i := 1; i < len(scrapes); i++ {
		if scrapes[i] < scrapes[i-1] || scrapes[i] > scaleUsers {
			t.Errorf("instacart_shared_tokens{role=shoppers} during the run: %v, want it to grow to at most %d", scrapes, scaleUsers)
			break
		}
	}
	t.Logf("instacart_shared_tokens{role=shoppers} during the run: %v", scrapes)

	// After the run: the metrics count every user's mint, and storage holds
	// one token per user (in whichever layout).
	m := freshMetrics(t, v)
	if n, _ := m.value("instacart_token_requests_total", reqLabels("shoppers", "fulfillment_user_assertion", "minted")); n != scaleUsers {
		t.Errorf("instacart_token_requests_total{role=shoppers,outcome=minted} = %v, want %d", n, scaleUsers)
	}
	if g := sharedTokensGauge(m, "shoppers"); g != scaleUsers {
		t.Errorf("instacart_shared_tokens{role=shoppers} = %v after the run, want %d", g, scaleUsers)
	}
	if keys := storedTokenKeys(t, v, "instacart", "shoppers"); len(keys) != scaleUsers {
		t.Errorf("%d tokens stored for the role after the run, want %d", len(keys), scaleUsers)
	}

	// Every token has expired by the engine's own account (expires_at as it
	// answered); then tidy removes them all.
	wait := time.Until(lastExpiry.Add(time.Second))
	t.Logf("waiting %s for the last token to expire", wait.Round(100*time.Millisecond))
	time.Sleep(wait)
	tick := firstRollbackTick(t, v)
	tidyStart := time.Now()
	tt := tidyUntilDone(t, v, 5*time.Minute)
	t.Logf("tidy: %d call(s) in %s: %d expired, %d orphaned removed; started %s before Vault's first rollback tick", tt.calls, tt.took.Round(time.Millisecond), tt.expired, tt.orphaned, tick.Sub(tidyStart).Round(100*time.Millisecond))
	if tt.expired != scaleUsers || tt.orphaned != 0 {
		t.Errorf("tidy removed %d expired and %d orphaned tokens, want %d expired and none orphaned%s", tt.expired, tt.orphaned, scaleUsers, periodicTidyNote(tick, tidyStart))
	}
	// The plugin's memory, sampled from the first read to the end of tidy.
	peak, samples := rss.finish()
	t.Logf("plugin RSS: peak %s from the first read to the end of tidy, over %d samples (limit %s)", mib(peak), samples, mib(scaleRSSLimit))
	if peak >= scaleRSSLimit {
		t.Errorf("the plugin's resident memory peaked at %s (%s during the reads) while %d users read and were tidied, want under %s", mib(peak), mib(readsPeak), scaleUsers, mib(scaleRSSLimit))
	}
	if samples < 100 {
		t.Errorf("only %d RSS samples of the plugin during the run", samples)
	}
	if keys := storedTokenKeys(t, v, "instacart", "shoppers"); len(keys) != 0 {
		t.Errorf("%d tokens still stored for the role after tidy (e.g. %s), want none under either layout", len(keys), keys[0])
	}
	if g := sharedTokensGauge(freshMetrics(t, v), "shoppers"); g != 0 {
		t.Errorf("instacart_shared_tokens{role=shoppers} = %v after tidy, want 0", g)
	}
	t.Logf("TestScale20kUsers took %s; plugin RSS peak %s", time.Since(start).Round(100*time.Millisecond), mib(peak))
}
