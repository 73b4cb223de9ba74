package connect_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// step is what a scriptedTransport does for one call.
type step func(*http.Request) (*http.Response, error)

// scriptedTransport plays steps in order, one per call; the last repeats.
// It reports what a real transport would through the request's httptrace,
// so the client can tell what reached Connect.
type scriptedTransport struct {
	mu    sync.Mutex
	calls int
	steps []step
}

func script(steps ...step) *scriptedTransport { return &scriptedTransport{steps: steps} }

func (s *scriptedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	i := min(s.calls, len(s.steps)-1)
	s.calls++
	s.mu.Unlock()
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return s.steps[i](req)
}

func (s *scriptedTransport) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// wrote reports through req's trace that a connection was obtained and the
// request written.
func wrote(req *http.Request) {
	trace := httptrace.ContextClientTrace(req.Context())
	trace.GetConn(req.URL.Host)
	trace.GotConn(httptrace.GotConnInfo{})
	trace.WroteHeaders()
	trace.WroteRequest(httptrace.WroteRequestInfo{})
}

// answer writes the request and gets status with body.
func answer(status int, body string) step {
	return func(req *http.Request) (*http.Response, error) {
		wrote(req)
		return &http.Response{
			StatusCode: status,
			Header:     http.Header{"Content-Type": {"application/json"}},
			Body:       io.NopCloser(strings.NewReader(body)),
			Request:    req,
		}, nil
	}
}

// writtenThenTimedOut writes the request, then no answer comes in time.
func writtenThenTimedOut(req *http.Request) (*http.Response, error) {
	wrote(req)
	return nil, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
}

// refused looks for a connection and gets none: provably nothing written.
func refused(req *http.Request) (*http.Response, error) {
	httptrace.ContextClientTrace(req.Context()).GetConn(req.URL.Host)
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

const invalidGrant = `{"error":"invalid_grant","error_description":"The provided authorization grant is invalid."}`

// TestErrorDescribesTheLastAttempt: the Error of a single-use request says
// what its last attempt got, since that alone decides whether the code may
// have been consumed. An earlier 503 (turned away unprocessed) must not make
// a later written-then-timed-out attempt look unprocessed, and an earlier
// written attempt must not make a later unsent one look sent.
func TestErrorDescribesTheLastAttempt(t *testing.T) {
	cases := []struct {
		name        string
		steps       []step
		maxRetries  int
		attempts    int
		status      int
		code        string
		sent        bool
		unprocessed bool
		timeout     bool
	}{
		{"503, then written and timed out", []step{answer(503, ""), writtenThenTimedOut}, 3, 2, 0, "", true, false, true},
		{"written and turned away 503, then refused before connecting", []step{answer(503, ""), refused}, 1, 2, 0, "", false, true, false},
		{"refused before connecting", []step{refused}, 0, 1, 0, "", false, true, false},
		{"written and timed out", []step{writtenThenTimedOut}, 3, 1, 0, "", true, false, true},
		{"400 invalid_grant", []step{answer(400, invalidGrant)}, 3, 1, 400, connect.ErrInvalidGrant, true, false, false},
		{"429, then 400 invalid_grant", []step{answer(429, ""), answer(400, invalidGrant)}, 3, 2, 400, connect.ErrInvalidGrant, true, false, false},
		{"503 until retries run out", []step{answer(503, "")}, 1, 2, 503, "", true, true, false},
		{"429 until retries run out", []step{answer(429, "")}, 0, 1, 429, "", true, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := script(tc.steps...)
			clock := newFakeClock()
			c := newClient(t, newFake(t), func(cfg *connect.Config) {
				cfg.Transport = tr
				cfg.MaxRetries = tc.maxRetries
				clock.install(cfg)
			})
			_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantAuthorizationCode, Code: "code-for-tests", RedirectURI: testRedirect})
			ce, ok := connect.AsError(err)
			if !ok {
				t.Fatalf("err = %v, not an *Error", err)
			}
			if ce.Attempts != tc.attempts || tr.Calls() != tc.attempts {
				t.Errorf("Attempts %d, transport calls %d, want %d", ce.Attempts, tr.Calls(), tc.attempts)
			}
			if ce.StatusCode != tc.status || ce.Code != tc.code {
				t.Errorf("StatusCode %d code %q, want %d %q: the last attempt's", ce.StatusCode, ce.Code, tc.status, tc.code)
			}
			if ce.Sent != tc.sent {
				t.Errorf("Sent = %v, want %v", ce.Sent, tc.sent)
			}
			if ce.Unprocessed() != tc.unprocessed {
				t.Errorf("Unprocessed() = %v, want %v", ce.Unprocessed(), tc.unprocessed)
			}
			if ce.Timeout() != tc.timeout {
				t.Errorf("Timeout() = %v, want %v", ce.Timeout(), tc.timeout)
			}
		})
	}
}

// TestUnprocessed pins the method on Errors built by hand, as callers and
// their tests do.
func TestUnprocessed(t *testing.T) {
	cases := []struct {
		e    connect.Error
		want bool
	}{
		{connect.Error{}, true}, // no attempt was sent
		{connect.Error{Sent: false, StatusCode: 0, Attempts: 2}, true},
		{connect.Error{Sent: true, StatusCode: 429}, true},
		{connect.Error{Sent: true, StatusCode: 503}, true},
		{connect.Error{Sent: true}, false}, // written, no answer
		{connect.Error{Sent: true, StatusCode: 400, Code: connect.ErrInvalidGrant}, false},
		{connect.Error{StatusCode: 400}, false}, // an answer means it was written, whatever Sent says
		{connect.Error{Sent: true, StatusCode: 500}, false},
		{connect.Error{Sent: true, StatusCode: 502}, false},
		{connect.Error{Sent: true, StatusCode: 504}, false},
		{connect.Error{Sent: true, StatusCode: 200, Code: connect.ErrInvalidResponse}, false},
	}
	for _, tc := range cases {
		if got := tc.e.Unprocessed(); got != tc.want {
			t.Errorf("%+v: Unprocessed() = %v, want %v", tc.e, got, tc.want)
		}
	}
}
