package connect

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-retryablehttp"
)

// maxRetryAfter is the longest Retry-After we wait out inside one read. Connect
// asks for seconds; a longer pause is better reported to the caller (who may
// be served a cached token meanwhile) than spent blocking a Vault request.
const maxRetryAfter = 30 * time.Second

// transientStatus reports whether an HTTP status is one Connect treats as
// transient (408, 429, 500, 503: retry later); other 5xx but 501 are treated
// the same way, as gateways in front of Connect produce them.
func transientStatus(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests ||
		(status >= 500 && status != http.StatusNotImplemented)
}

// attemptState records, per call, how many attempts were made and what the
// last one got (its status, whether it may have reached Connect), so errors
// can say so even when the context ends the retry loop. Only the last
// attempt is kept: for a single-use request every earlier one was turned
// away or provably never sent (retryPolicy repeats nothing else), so the
// last alone says whether the code may have been consumed.
type attemptState struct {
	mu       sync.Mutex
	attempts int
	status   int // the current attempt's status; 0 until it is answered
	// singleUse: the request carries a single-use authorization code, so an
	// attempt that may have reached Connect must never be repeated.
	singleUse bool
	current   *attemptTrace // nil until the current attempt reaches the transport
	// now is the client's clock; started is when the current attempt began.
	now     func() time.Time
	started time.Time
	// sleep is Config.Sleep; wait is the backoff before the next attempt,
	// set by backoff and spent by countAttempt.
	sleep func(context.Context, time.Duration) error
	wait  time.Duration
	// aborted is why no further attempt may be sent (a wait before it was
	// cut short); the transport refuses it and retryPolicy ends the call.
	aborted error
	// pause is the client's: a 429 from the token endpoint holds back every
	// token request.
	pause *Throttle
	// log gets one debug line per retry (nil: none).
	log hclog.Logger

	// For the Observer (observer.go): what the call is, and the current
	// attempt's wall-clock span and result.
	obs                 Observer
	label               any // the caller's, for the Observer
	endpoint            Endpoint
	grant               GrantType
	first, began, ended time.Time
	attemptStatus       int
	attemptErr          error
}

// attemptTrace is what httptrace saw of one attempt; guarded by attemptState.mu.
type attemptTrace struct {
	askedConn bool // the transport traces and began looking for a connection
	reached   bool // a connection was handed over or bytes were written
}

// unsent reports whether the attempt provably wrote nothing to Connect. The
// standard transports write only after GotConn, which they report
// synchronously, so GetConn without GotConn (refused, DNS or TLS failure, or
// a timeout while connecting) proves it. A transport that does not trace
// proves nothing.
func (a *attemptTrace) unsent() bool { return a == nil || a.askedConn && !a.reached }

type attemptStateKey struct{}

func withAttemptState(ctx context.Context, st *attemptState) context.Context {
	return context.WithValue(ctx, attemptStateKey{}, st)
}

func attemptStateFrom(ctx context.Context) *attemptState {
	st, _ := ctx.Value(attemptStateKey{}).(*attemptState)
	return st
}

// countAttempt is a retryablehttp RequestLogHook: it runs once before every
// attempt. It waits first (the backoff backoff recorded, then for a token
// request the Throttle's pause) through Config.Sleep, which retryablehttp
// cannot be given, on the request's context. If the wait is cut short the
// attempt is not begun: the state is marked aborted, so the transport sends
// nothing and retryPolicy ends the call with the wait's error.
func countAttempt(_ retryablehttp.Logger, req *http.Request, _ int) {
	st := attemptStateFrom(req.Context())
	if st == nil {
		return
	}
	if err := st.waitBeforeAttempt(req.Context()); err != nil {
		st.mu.Lock()
		st.aborted = err
		st.mu.Unlock()
		return
	}
	st.mu.Lock()
	before, lastStatus := st.attempts, st.status
	prev, retried := st.beginAttemptLocked()
	st.attempts++
	st.current = nil
	st.status = 0
	st.started = st.now()
	st.mu.Unlock()
	if retried {
		st.obs.Retrying(req.Context(), prev)
	}
	if before > 0 && st.log != nil {
		st.log.Debug("retrying a Connect request", "endpoint", string(st.endpoint), "attempt", before+1, "previous_status", lastStatus)
	}
}

// waitBeforeAttempt waits out the recorded backoff and, for token requests
// only, the Throttle's pause. Revocations never wait on the Throttle: they
// end a token's exposure, and a mint stampede's 429 must not delay that.
func (s *attemptState) waitBeforeAttempt(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	d := s.wait
	s.wait = 0
	s.mu.Unlock()
	if d > 0 {
		if err := s.sleep(ctx, d); err != nil {
			return err
		}
	}
	if s.endpoint != EndpointToken {
		return nil
	}
	return s.pause.wait(ctx, s.now, s.sleep)
}

// abortErr is why no further attempt may be sent, if one may not.
func (s *attemptState) abortErr() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aborted
}

// tracingTransport gives every attempt its own httptrace, so a callback that
// fires late (a write finishing after its attempt timed out) is charged to
// the attempt that made it, not to the next one.
type tracingTransport struct{ next http.RoundTripper }

func (t *tracingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st := attemptStateFrom(req.Context())
	if st == nil {
		return t.next.RoundTrip(req)
	}
	if err := st.abortErr(); err != nil { // countAttempt's wait was cut short
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	a := &attemptTrace{}
	st.mu.Lock()
	st.current = a
	st.mu.Unlock()
	mark := func(reached bool) {
		st.mu.Lock()
		if reached {
			a.reached = true
		} else {
			a.askedConn = true
		}
		st.mu.Unlock()
	}
	trace := &httptrace.ClientTrace{
		GetConn:      func(string) { mark(false) },
		GotConn:      func(httptrace.GotConnInfo) { mark(true) },
		WroteHeaders: func() { mark(true) },
		WroteRequest: func(httptrace.WroteRequestInfo) { mark(true) },
	}
	resp, err := t.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	// Only the token endpoint's 429 pauses: that is the limit the Throttle
	// protects, and a revocation's 429 says nothing about it.
	if st.endpoint == EndpointToken {
		st.pause.noteAnswer(resp, st.now())
	}
	return resp, err
}

func (t *tracingTransport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (s *attemptState) recordStatus(resp *http.Response, err error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	status := 0
	if resp != nil {
		s.status, status = resp.StatusCode, resp.StatusCode
	}
	s.endAttemptLocked(status, err)
	s.mu.Unlock()
}

// currentUnsent reports whether the current attempt provably wrote nothing.
func (s *attemptState) currentUnsent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current.unsent()
}

// startedAt is when the current (for a success, the successful) attempt began.
func (s *attemptState) startedAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

func (s *attemptState) isSingleUse() bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.singleUse
}

// snapshot returns the attempts made, and the last attempt's status (0 if
// it got no answer) and whether it may have written the request.
func (s *attemptState) snapshot() (attempts, status int, sent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts, s.status, s.attempts > 0 && !s.current.unsent()
}

// retryPolicy is go-retryablehttp's DefaultRetryPolicy (network errors, 429
// and 5xx but 501; never a context that ended, a bad certificate or a
// redirect) with what Connect needs on top:
//   - 408 is retried too;
//   - a complete answer that is not retried wins over a deadline that passed
//     as it arrived: dropping it would lose a minted token;
//   - a single-use request (an authorization code) is repeated only when the
//     attempt provably never reached Connect, or Connect answered 429 or 503
//     (it did not process it): otherwise Connect may have consumed the code,
//     and a second POST only earns invalid_grant;
//   - a Retry-After longer than maxRetryAfter, or one that cannot fit before
//     the caller's deadline, stops at once, so the error names Connect's
//     status rather than a bare context timeout.
func retryPolicy(maxRetryAfter time.Duration) retryablehttp.CheckRetry {
	return func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		st := attemptStateFrom(ctx)
		if abortErr := st.abortErr(); abortErr != nil {
			return false, abortErr // nothing was sent: the last attempt stays the one before
		}
		st.recordStatus(resp, err)
		if err == nil && !retryStatus(st, resp.StatusCode) {
			return false, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return false, ctxErr
		}
		// A response whose body broke off was answered, hence processed.
		if err != nil && st.isSingleUse() && (resp != nil || !st.currentUnsent()) {
			return false, nil
		}
		if retry, checkErr := retryablehttp.DefaultRetryPolicy(ctx, resp, err); !retry && (err != nil || resp.StatusCode != http.StatusRequestTimeout) {
			return false, checkErr
		}
		if err != nil {
			return true, nil
		}
		if wait, ok := retryAfter(resp, st.now()); ok {
			if wait > maxRetryAfter {
				return false, nil
			}
			if deadline, has := ctx.Deadline(); has && time.Until(deadline) < wait {
				return false, nil
			}
		}
		return true, nil
	}
}

// retryStatus reports whether an answer with status may be retried. A
// single-use request (an authorization code) only when Connect turned it away
// unprocessed (429, 503).
func retryStatus(st *attemptState, status int) bool {
	if st.isSingleUse() {
		return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
	}
	return transientStatus(status)
}

// backoff is the call's retryablehttp Backoff. It records the wait before
// the next attempt for countAttempt to spend through Config.Sleep, and
// returns 0 so retryablehttp's own real timer never waits.
func (s *attemptState) backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	d := backoffWait(minWait, maxWait, attempt, resp, s.now())
	s.mu.Lock()
	s.wait = d
	s.mu.Unlock()
	return 0
}

// backoffWait is what Connect's Retry-After asks for, otherwise an exponential
// delay with equal jitter (half fixed, half random) so many clients recovering
// at once do not retry in step yet none retries at once.
func backoffWait(minWait, maxWait time.Duration, attempt int, resp *http.Response, now time.Time) time.Duration {
	if wait, ok := retryAfter(resp, now); ok {
		return wait
	}
	ceiling := minWait << min(attempt, 20)
	if ceiling <= 0 || ceiling > maxWait {
		ceiling = maxWait
	}
	return ceiling/2 + rand.N(ceiling/2+1)
}

// retryAfter parses a Retry-After header in either of its forms (seconds or
// an HTTP-date, counted from now on the client's clock).
func retryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil {
		return 0, false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// newTransport is a pooled transport with timeouts on every phase, so a host
// that accepts and never answers cannot hold a connection forever.
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
}
