package connect

import (
	"context"
	"errors"
	"net"
	"time"
)

// Endpoint names a Connect endpoint in observations.
type Endpoint string

// The endpoints a Client calls.
const (
	EndpointToken  Endpoint = "token"
	EndpointRevoke Endpoint = "revoke"
)

// Observer is told how calls to Connect go, for metrics and logs. Its methods
// run on the goroutine making the call, possibly many at once, and must
// return quickly. They are never given a request or response body, a token,
// a code, an assertion or a credential. Every attempt is reported exactly
// once: to Retrying if another attempt follows it, else to Finished.
type Observer interface {
	// Retrying reports an attempt that is about to be followed by another.
	Retrying(ctx context.Context, a Attempt)
	// Finished reports the last attempt of a Token or Revoke call that sent
	// at least one; err is what the call returns (nil on success).
	Finished(ctx context.Context, last Attempt, err error)
}

// Attempt is one HTTP request to Connect.
type Attempt struct {
	Endpoint Endpoint
	// Grant is the grant of a token request; empty for revocations.
	Grant GrantType
	// Number counts the call's attempts from 1.
	Number int
	// Status is the HTTP status of a complete answer; 0 when none arrived
	// (a network error, a timeout, or an answer cut off).
	Status int
	// Timeout: no answer arrived in time (request_timeout or the caller's deadline).
	Timeout bool
	// Duration is how long the attempt took, until its answer was read or it failed.
	Duration time.Duration
	// Elapsed is the time since the call's first attempt began.
	Elapsed time.Duration
	// Label is the caller's, passed with the call (TokenRequest.Label, or
	// Revoke's label) and handed back untouched, so an observer can say whose
	// call it was without the client knowing.
	Label any
}

// newAttemptState starts the bookkeeping of one call.
func (c *Client) newAttemptState(endpoint Endpoint, grant GrantType, singleUse bool, label any) *attemptState {
	return &attemptState{singleUse: singleUse, now: c.now, sleep: c.sleep, pause: c.pause, obs: c.obs, log: c.logger, endpoint: endpoint, grant: grant, label: label}
}

// beginAttemptLocked is called as an attempt starts. It returns the previous
// attempt, which is being retried, when there is one to report.
func (s *attemptState) beginAttemptLocked() (prev Attempt, retried bool) {
	wall := time.Now()
	if s.attempts > 0 && s.obs != nil {
		prev, retried = s.lastAttemptLocked(wall), true
	}
	if s.first.IsZero() {
		s.first = wall
	}
	s.began, s.ended = wall, time.Time{}
	s.attemptStatus, s.attemptErr = 0, nil
	return prev, retried
}

// endAttemptLocked records what the current attempt got.
func (s *attemptState) endAttemptLocked(status int, err error) {
	s.attemptStatus, s.attemptErr, s.ended = status, err, time.Now()
}

// lastAttemptLocked describes the current (or just ended) attempt.
func (s *attemptState) lastAttemptLocked(now time.Time) Attempt {
	end := s.ended
	if end.IsZero() {
		end = now
	}
	a := Attempt{
		Endpoint: s.endpoint,
		Grant:    s.grant,
		Number:   s.attempts,
		Status:   s.attemptStatus,
		Timeout:  isTimeout(s.attemptErr),
		Duration: end.Sub(s.began),
		Elapsed:  now.Sub(s.first),
		Label:    s.label,
	}
	if s.attemptErr != nil {
		a.Status = 0
	}
	return a
}

// finish reports the call's last attempt to the observer.
func (s *attemptState) finish(ctx context.Context, err error) {
	if s.obs == nil {
		return
	}
	s.mu.Lock()
	if s.attempts == 0 {
		s.mu.Unlock()
		return
	}
	last := s.lastAttemptLocked(time.Now())
	s.mu.Unlock()
	s.obs.Finished(ctx, last, err)
}

func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
