package connect

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// maxRetryAfter is the longest Retry-After we wait out inside one read. Connect
// asks for seconds; a longer pause is better reported to the caller (who may
// be served a cached token meanwhile) than spent blocking a Vault request.
const maxRetryAfter = 30 * time.Second

// Retryable reports whether an HTTP status is one Connect documents as
// transient ("408, 429, 500, 503: retry later", connect-api.md); other 5xx are
// treated the same way, as gateways in front of Connect produce them.
func Retryable(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests ||
		(status >= 500 && status != http.StatusNotImplemented)
}

// attemptState records, per call, how many attempts were made and the last
// status seen, so errors can say so even when the context ends the retry loop.
type attemptState struct {
	mu       sync.Mutex
	attempts int
	status   int
}

type attemptStateKey struct{}

func withAttemptState(ctx context.Context, st *attemptState) context.Context {
	return context.WithValue(ctx, attemptStateKey{}, st)
}

func attemptStateFrom(ctx context.Context) *attemptState {
	st, _ := ctx.Value(attemptStateKey{}).(*attemptState)
	return st
}

// countAttempt is a retryablehttp RequestLogHook: it runs once before every attempt.
func countAttempt(_ retryablehttp.Logger, req *http.Request, _ int) {
	if st := attemptStateFrom(req.Context()); st != nil {
		st.mu.Lock()
		st.attempts++
		st.mu.Unlock()
	}
}

func (s *attemptState) recordStatus(resp *http.Response) {
	if s == nil || resp == nil {
		return
	}
	s.mu.Lock()
	s.status = resp.StatusCode
	s.mu.Unlock()
}

func (s *attemptState) snapshot() (attempts, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts, s.status
}

// retryPolicy retries network errors and transient statuses, never client
// errors (4xx other than 408/429: the request itself is wrong and retrying only
// hammers Connect). It also stops early when the wait Connect asks for cannot
// fit before the caller's deadline, so the error names Connect's status rather
// than a bare context timeout.
func retryPolicy(maxRetryAfter time.Duration) func(context.Context, *http.Response, error) (bool, error) {
	return func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		attemptStateFrom(ctx).recordStatus(resp)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return false, ctxErr
		}
		if err != nil {
			var tlsErr *tls.CertificateVerificationError
			if errors.As(err, &tlsErr) {
				return false, err // a bad certificate will not fix itself
			}
			return true, nil
		}
		if !Retryable(resp.StatusCode) {
			return false, nil
		}
		if wait, ok := retryAfter(resp); ok {
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

// backoff waits what Connect's Retry-After asks for, otherwise an exponential
// delay with full jitter so many clients recovering at once do not retry in step.
func backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	if wait, ok := retryAfter(resp); ok {
		return wait
	}
	ceiling := minWait << min(attempt, 20)
	if ceiling <= 0 || ceiling > maxWait {
		ceiling = maxWait
	}
	return ceiling/2 + rand.N(ceiling/2+1)
}

// retryAfter parses a Retry-After header in either of its forms (seconds or an HTTP-date).
func retryAfter(resp *http.Response) (time.Duration, bool) {
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
		return max(time.Until(at), 0), true
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
