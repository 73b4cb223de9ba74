package connect_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// fakeClock is a Config.Now and Config.Sleep pair: Sleep never waits, it
// records the wait and moves Now forward by it. Its start is far in the
// past, so a pause measured on the real clock instead cannot pass for one
// measured on it.
type fakeClock struct {
	start time.Time

	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
	// onSleep, if set, decides what Sleep returns (after recording).
	onSleep func(ctx context.Context, d time.Duration) error
	ctxs    []context.Context
}

func newFakeClock() *fakeClock {
	start := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	return &fakeClock{start: start, now: start}
}

func (c *fakeClock) install(cfg *connect.Config) { cfg.Now, cfg.Sleep = c.Now, c.Sleep }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.ctxs = append(c.ctxs, ctx)
	c.now = c.now.Add(d)
	on := c.onSleep
	c.mu.Unlock()
	if on != nil {
		return on(ctx, d)
	}
	return ctx.Err()
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sleeps)
}

// TestRetryAfterIsWaitedThroughSleep: a 429 (or 503) with Retry-After: 5
// then a 200 finishes once the injected Sleep has moved the fake clock 5 s
// on, in one Sleep call on the caller's context, with no real wait: neither
// retryablehttp's timer nor the Throttle waits behind it. The 503 sets no
// Throttle pause, so only the retry backoff can account for its Sleep.
func TestRetryAfterIsWaitedThroughSleep(t *testing.T) {
	for _, status := range []int{429, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			fake := newFake(t)
			clock := newFakeClock()
			c := newClient(t, fake, clock.install)
			fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: status, RetryAfter: "5"})
			ctx := context.WithValue(context.Background(), ctxMark{}, true)
			tok, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if got := clock.Sleeps(); !slices.Equal(got, []time.Duration{5 * time.Second}) {
				t.Fatalf("Sleep calls %v, want one of 5s", got)
			}
			if moved := clock.Now().Sub(clock.start); moved < 5*time.Second {
				t.Errorf("fake clock moved %v, want at least 5s", moved)
			}
			if clock.ctxs[0].Value(ctxMark{}) == nil {
				t.Error("Sleep was not given the caller's context")
			}
			if want := clock.start.Add(5 * time.Second); !tok.RequestedAt.Equal(want) {
				t.Errorf("RequestedAt %v, want %v (the retry, on the fake clock)", tok.RequestedAt, want)
			}
			if got := fake.Requests(connectfake.PathToken); got != 2 {
				t.Errorf("%d requests, want 2", got)
			}
		})
	}
}

// TestBackoffIsWaitedThroughSleep: without Retry-After, the exponential
// backoff between retries is spent in Sleep too.
func TestBackoffIsWaitedThroughSleep(t *testing.T) {
	fake := newFake(t)
	clock := newFakeClock()
	c := newClient(t, fake, func(cfg *connect.Config) {
		clock.install(cfg)
		cfg.RetryWaitMin, cfg.RetryWaitMax = time.Second, 4*time.Second
	})
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 500})
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
		t.Fatalf("Token: %v", err)
	}
	got := clock.Sleeps()
	if len(got) != 2 {
		t.Fatalf("Sleep calls %v, want 2", got)
	}
	// Equal jitter: half of the ceiling fixed, half random.
	if got[0] < 500*time.Millisecond || got[0] > time.Second || got[1] < time.Second || got[1] > 2*time.Second {
		t.Errorf("waits %v, want within [0.5s,1s] then [1s,2s]", got)
	}
}

// TestRetryAfterTooLongEndsTheCall: a Retry-After beyond the cap, or one
// that cannot fit before the caller's deadline, is not waited: the call ends
// at once with Connect's status.
func TestRetryAfterTooLongEndsTheCall(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		deadline   time.Duration // 0: none
	}{
		{"beyond the 30s cap", "31", 0},
		{"past the caller's deadline", "20", 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			clock := newFakeClock()
			c := newClient(t, fake, clock.install)
			fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: tc.retryAfter})
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			if ce, ok := connect.AsError(err); !ok || ce.StatusCode != 429 || ce.Attempts != 1 {
				t.Fatalf("err = %v", err)
			}
			if got := clock.Sleeps(); len(got) != 0 {
				t.Errorf("Sleep calls %v, want none", got)
			}
		})
	}
}

// TestThrottlePauseRunsOnTheClientsClock: the pause a 429 sets is measured
// on Config.Now, so the fake clock that Sleep advances ends it.
func TestThrottlePauseRunsOnTheClientsClock(t *testing.T) {
	fake := newFake(t)
	clock := newFakeClock()
	c := newClient(t, fake, func(cfg *connect.Config) { clock.install(cfg); cfg.MaxRetries = 0 })
	cc := connect.TokenRequest{GrantType: connect.GrantClientCredentials}
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "5"})
	if _, err := c.Token(context.Background(), cc); err == nil {
		t.Fatal("the 429 was not reported")
	}
	if _, err := c.Token(context.Background(), cc); err != nil {
		t.Fatalf("second: %v", err)
	}
	if got := clock.Sleeps(); !slices.Equal(got, []time.Duration{5 * time.Second}) {
		t.Fatalf("Sleep calls %v, want one of 5s: the pause, on the fake clock", got)
	}
	if _, err := c.Token(context.Background(), cc); err != nil {
		t.Fatalf("third: %v", err)
	}
	if got := clock.Sleeps(); len(got) != 1 {
		t.Errorf("Sleep calls %v: the pause outlived the fake clock's 5s", got)
	}
}

// TestThrottleHoldsBackOnlyTokenRequests: a revocation goes through while a
// token 429's pause holds token requests back, and a 429 from the revoke
// endpoint pauses nothing.
func TestThrottleHoldsBackOnlyTokenRequests(t *testing.T) {
	fake := newFake(t)
	clock := newFakeClock()
	c := newClient(t, fake, func(cfg *connect.Config) { clock.install(cfg); cfg.MaxRetries = 0 })
	ctx := context.Background()
	cc := connect.TokenRequest{GrantType: connect.GrantClientCredentials}

	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "5"})
	if _, err := c.Token(ctx, cc); err == nil {
		t.Fatal("the 429 was not reported")
	}
	if err := c.Revoke(ctx, c.Credentials(), "unknown-token", nil); err != nil {
		t.Fatalf("Revoke during the pause: %v", err)
	}
	if got := clock.Sleeps(); len(got) != 0 {
		t.Fatalf("the revocation waited on the token endpoint's pause: Sleep calls %v", got)
	}
	if got := fake.Requests(connectfake.PathRevoke); got != 1 {
		t.Fatalf("%d revoke requests, want 1", got)
	}
	// Token requests are still held back, until the fake clock passes 5s.
	if _, err := c.Token(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if got := clock.Sleeps(); !slices.Equal(got, []time.Duration{5 * time.Second}) {
		t.Fatalf("Sleep calls %v, want the token request to wait out 5s", got)
	}

	fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 429, RetryAfter: "5"})
	if err := c.Revoke(ctx, c.Credentials(), "unknown-token", nil); err == nil {
		t.Fatal("the revoke endpoint's 429 was not reported")
	}
	if _, err := c.Token(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if got := clock.Sleeps(); len(got) != 1 {
		t.Errorf("a 429 from the revoke endpoint paused token requests: Sleep calls %v", got)
	}
}

// TestWaitCutShortSendsNothingMore: when Sleep ends early (the caller gave
// up during a backoff) no further attempt is sent or counted, and the Error
// and the observer describe the attempt before it.
func TestWaitCutShortSendsNothingMore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := newFakeClock()
	clock.onSleep = func(ctx context.Context, _ time.Duration) error {
		cancel() // the caller gives up while the client waits to retry
		<-ctx.Done()
		return ctx.Err()
	}
	obs := &recordingObserver{}
	tr := script(answer(503, ""), answer(200, `{"access_token":"placeholder-token","token_type":"Bearer","expires_in":86400}`))
	c := newClient(t, newFake(t), func(cfg *connect.Config) { clock.install(cfg); cfg.Transport = tr; cfg.Observer = obs })
	_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantAuthorizationCode, Code: "code-for-tests", RedirectURI: testRedirect})
	ce, ok := connect.AsError(err)
	if !ok || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if tr.Calls() != 1 || ce.Attempts != 1 {
		t.Errorf("transport calls %d, Attempts %d, want 1: the retry was sent", tr.Calls(), ce.Attempts)
	}
	if ce.StatusCode != 503 || !ce.Sent || !ce.Unprocessed() {
		t.Errorf("StatusCode %d Sent %v Unprocessed %v, want the 503 attempt's: 503, true, true", ce.StatusCode, ce.Sent, ce.Unprocessed())
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.retries) != 0 || len(obs.finished) != 1 || obs.finished[0].Number != 1 || obs.finished[0].Status != 503 {
		t.Errorf("observer: retrying %+v, finished %+v; want only attempt 1 (503) finished", obs.retries, obs.finished)
	}
}

// TestPauseCutShortSendsNothing: a token request that gives up while the
// Throttle holds it back never reaches Connect, and provably sent nothing.
func TestPauseCutShortSendsNothing(t *testing.T) {
	fake := newFake(t)
	clock := newFakeClock()
	c := newClient(t, fake, func(cfg *connect.Config) { clock.install(cfg); cfg.MaxRetries = 0 })
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "5"})
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err == nil {
		t.Fatal("the 429 was not reported")
	}
	clock.onSleep = func(context.Context, time.Duration) error { return context.DeadlineExceeded }
	_, err := c.Token(context.Background(), codeRequest(fake))
	ce, ok := connect.AsError(err)
	if !ok || ce.Attempts != 0 || ce.Sent || !ce.Unprocessed() || !ce.Timeout() {
		t.Fatalf("err = %#v", err)
	}
	if got := fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("%d token requests, want only the first", got)
	}
}
