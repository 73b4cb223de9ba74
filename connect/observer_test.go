package connect_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// recordingObserver keeps what a Client reported.
type recordingObserver struct {
	mu       sync.Mutex
	retries  []connect.Attempt
	finished []connect.Attempt
	errs     []error
	ctxOK    bool
}

type ctxMark struct{}

func (o *recordingObserver) Retrying(ctx context.Context, a connect.Attempt) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ctxOK = ctx.Value(ctxMark{}) != nil
	o.retries = append(o.retries, a)
}

func (o *recordingObserver) Finished(ctx context.Context, a connect.Attempt, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ctxOK = o.ctxOK || ctx.Value(ctxMark{}) != nil
	o.finished = append(o.finished, a)
	o.errs = append(o.errs, err)
}

func (o *recordingObserver) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.retries, o.finished, o.errs, o.ctxOK = nil, nil, nil, false
}

// TestObserverSeesEveryAttemptOnce: each attempt is reported once, to
// Retrying when another follows and to Finished when it is the last, with its
// status ("0" for a network failure), and the caller's context.
func TestObserverSeesEveryAttemptOnce(t *testing.T) {
	fake := newFake(t)
	obs := &recordingObserver{}
	c := newClient(t, fake, func(cfg *connect.Config) {
		cfg.Observer = obs
		cfg.RequestTimeout = 300 * time.Millisecond
		cfg.MaxRetries = 2
	})
	ctx := context.WithValue(context.Background(), ctxMark{}, true)
	cc := connect.TokenRequest{GrantType: connect.GrantClientCredentials}

	type want struct {
		retries  []int // statuses of retried attempts
		last     int   // status of the last attempt
		timeout  bool  // the last attempt timed out
		ok       bool
		attempts int
	}
	cases := []struct {
		name   string
		faults []connectfake.Fault
		want   want
	}{
		{"first try", nil, want{last: 200, ok: true, attempts: 1}},
		{"503 then 200", []connectfake.Fault{{Status: 503}}, want{retries: []int{503}, last: 200, ok: true, attempts: 2}},
		{"reset then 200", []connectfake.Fault{{Reset: true}}, want{retries: []int{0}, last: 200, ok: true, attempts: 2}},
		{"429, 500, 502: out of retries", []connectfake.Fault{{Status: 429, RetryAfter: "0"}, {Status: 500}, {Status: 502}}, want{retries: []int{429, 500}, last: 502, attempts: 3}},
		{"401 is not retried", []connectfake.Fault{{Status: 401, Body: `{"error":"invalid_client"}`}}, want{last: 401, attempts: 1}},
		{"hung three times", []connectfake.Fault{{Hang: true}, {Hang: true}, {Hang: true}}, want{retries: []int{0, 0}, last: 0, timeout: true, attempts: 3}},
		{"unusable 200", []connectfake.Fault{{Status: 200, Body: `{"access_token":"x","token_type":"mac","expires_in":60}`}}, want{last: 200, attempts: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake.ClearFaults()
			fake.InjectFaults(connectfake.PathToken, tc.faults...)
			obs.reset()
			_, err := c.Token(ctx, cc)
			if (err == nil) != tc.want.ok {
				t.Fatalf("Token: err = %v, want ok = %v", err, tc.want.ok)
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			var got []int
			for i, a := range obs.retries {
				got = append(got, a.Status)
				if a.Number != i+1 || a.Endpoint != connect.EndpointToken || a.Grant != connect.GrantClientCredentials {
					t.Errorf("retry %d reported as %+v", i+1, a)
				}
			}
			if !slices.Equal(got, tc.want.retries) {
				t.Errorf("retried attempts' statuses = %v, want %v", got, tc.want.retries)
			}
			// An unusable answer that names a token is reported once: the
			// client hands the token to the caller rather than revoking it.
			if len(obs.finished) != 1 {
				t.Fatalf("Finished reported %d times, want once", len(obs.finished))
			}
			last := obs.finished[0]
			if last.Status != tc.want.last || last.Timeout != tc.want.timeout || last.Number != tc.want.attempts {
				t.Errorf("last attempt = %+v, want status %d, timeout %v, number %d", last, tc.want.last, tc.want.timeout, tc.want.attempts)
			}
			if (obs.errs[0] == nil) != tc.want.ok {
				t.Errorf("Finished err = %v", obs.errs[0])
			}
			if last.Duration <= 0 || last.Elapsed < last.Duration {
				t.Errorf("durations: attempt %v, call %v", last.Duration, last.Elapsed)
			}
			if !obs.ctxOK {
				t.Error("the observer did not get the caller's context")
			}
		})
	}
	fake.ClearFaults()

	// A revocation is reported under its own endpoint, without a grant.
	tok, err := c.Token(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	obs.reset()
	if err := c.Revoke(ctx, c.Credentials(), tok.AccessToken, nil); err != nil {
		t.Fatal(err)
	}
	if len(obs.finished) != 1 || obs.finished[0].Endpoint != connect.EndpointRevoke || obs.finished[0].Grant != "" || obs.finished[0].Status != http.StatusOK {
		t.Errorf("revocation reported as %+v", obs.finished)
	}
}

// TestObserverNotToldOfCallsThatSendNothing: a request refused before any
// attempt (bad input) is not an attempt.
func TestObserverNotToldOfCallsThatSendNothing(t *testing.T) {
	fake := newFake(t)
	obs := &recordingObserver{}
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.Observer = obs })
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantFulfillmentUserAssertion}); err == nil {
		t.Fatal("an assertion request without a user id succeeded")
	}
	if len(obs.retries)+len(obs.finished) != 0 {
		t.Errorf("observer told of %d attempts", len(obs.retries)+len(obs.finished))
	}
}

// TestObserverGetsTheCallersLabel: the label a caller passes with a token
// request or a revocation comes back on every attempt, retries included, so
// the observer can say whose call it was without a context value.
func TestObserverGetsTheCallersLabel(t *testing.T) {
	fake := newFake(t)
	obs := &recordingObserver{}
	c := newClient(t, fake, func(cfg *connect.Config) {
		cfg.Observer = obs
		cfg.MaxRetries = 1
	})
	type label struct{ role string }
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503})
	tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials, Label: label{"minting"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(context.Background(), c.Credentials(), tok.AccessToken, label{"revoking"}); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.retries) != 1 || obs.retries[0].Label != (label{"minting"}) {
		t.Errorf("retried attempt labels: %+v", obs.retries)
	}
	if len(obs.finished) != 2 || obs.finished[0].Label != (label{"minting"}) || obs.finished[1].Label != (label{"revoking"}) {
		t.Errorf("finished attempt labels: %+v", obs.finished)
	}
}
