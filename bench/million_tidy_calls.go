package main

// POST and GET instacart/tidy as the tidy scenarios call them.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// tidyBackground is the engine's warning for a tidy call that outlasted its
// request.
const tidyBackground = "tidy goes on in the background"

// tidyUntilEmpty calls POST instacart/tidy until a call answers without the
// "goes on in the background" warning and none of store's tokens is left, for
// at most limit; it times from the first call.
func (r *runner) tidyUntilEmpty(ctx context.Context, store *tokenStore, limit time.Duration) ([]tidyCall, time.Duration, int, error) {
	var calls []tidyCall
	left := -1
	t0 := time.Now()
	for time.Since(t0) < limit && ctx.Err() == nil {
		var tidy struct {
			Warnings []string `json:"warnings"`
			Data     struct {
				Expired  int `json:"expired_tokens_removed"`
				Orphaned int `json:"orphaned_tokens_removed"`
				Retired  int `json:"retired_credentials_removed"`
			} `json:"data"`
		}
		t1 := time.Now()
		err := r.vault.Must(http.MethodPost, "instacart/tidy", nil, &tidy)
		c := tidyCall{took: time.Since(t1), expired: tidy.Data.Expired, orphaned: tidy.Data.Orphaned, retired: tidy.Data.Retired, warnings: tidy.Warnings}
		if err != nil {
			c.err = compact(r.vault.Redact(err.Error()))
		}
		calls = append(calls, c)
		r.logf("  POST instacart/tidy #%d: %s", len(calls), c)
		background := false
		for _, w := range tidy.Warnings {
			background = background || strings.Contains(w, tidyBackground)
		}
		if background || err != nil {
			continue // the pass goes on; the next call joins it
		}
		var cerr error
		if left, cerr = store.count(); cerr != nil {
			return calls, time.Since(t0), left, cerr
		}
		if left == 0 {
			break
		}
	}
	took := time.Since(t0)
	if left != 0 {
		var err error
		if left, err = store.count(); err != nil {
			return calls, took, left, err
		}
	}
	return calls, took, left, nil
}

// tidyStatus is GET instacart/tidy (the running pass's progress), when the
// engine has it.
func (r *runner) tidyStatus() (map[string]any, string) {
	var out struct {
		Data map[string]any `json:"data"`
	}
	st, raw, err := r.vault.Call(http.MethodGet, "instacart/tidy", nil, &out)
	switch {
	case err != nil:
		return nil, compact(r.vault.Redact(err.Error()))
	case st != http.StatusOK:
		return nil, fmt.Sprintf("HTTP %d: %s", st, compact(r.vault.Redact(raw)))
	}
	return out.Data, ""
}

// timedTidy counts the stored tokens, tidies them all away (tidyUntilEmpty)
// and polls GET instacart/tidy every second meanwhile for the pace, calling
// onPoll after each poll.
func (r *runner) timedTidy(ctx context.Context, store *tokenStore, onPoll func()) (tidyRun, []int, error) {
	var run tidyRun
	var err error
	if run.storedBefore, err = store.count(); err != nil {
		return run, nil, err
	}
	stop := make(chan struct{})
	polled := make(chan []int)
	go func() {
		var paces []int
		polls := 0
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				polled <- paces
				return
			case <-t.C:
				polls++
				if st, _ := r.tidyStatus(); st != nil && st["running"] == true {
					kps, _ := st["paced_keys_per_second"].(float64)
					paces = append(paces, int(kps))
					if polls%10 == 1 {
						r.logf("  … tidy at %v: %v checked, pace %d keys/s, batch latency %v (baseline %v)", st["position"], st["tokens_checked"], int(kps), st["batch_latency"], st["baseline_batch_latency"])
					}
				}
				if onPoll != nil {
					onPoll()
				}
			}
		}
	}()
	run.calls, run.took, run.storedAfter, err = r.tidyUntilEmpty(ctx, store, 3*tidyBusyLimitFor(run.storedBefore)+10*time.Minute)
	close(stop)
	return run, <-polled, err
}
