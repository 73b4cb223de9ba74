package connect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Instacart's OAuth error codes (Instacart's Connect docs, "Errors").
const (
	ErrInvalidGrant         = "invalid_grant"
	ErrInvalidRequest       = "invalid_request"
	ErrInvalidScope         = "invalid_scope"
	ErrInvalidClient        = "invalid_client"
	ErrUnsupportedGrantType = "unsupported_grant_type"
	ErrUnauthorizedClient   = "unauthorized_client"
	ErrQueryParamsForbidden = "query_params_forbidden"
	// ErrInvalidResponse is ours: Connect answered 200 with something that is not a usable token.
	ErrInvalidResponse = "invalid_response"
)

// errRedirect explains a 3xx answer, which the client never follows.
var errRedirect = errors.New("unexpected redirect (not followed, credentials stay here)")

// maxDescription bounds how much of Connect's error text we carry into errors.
const maxDescription = 200

// Error is a failed Connect call: an error status with Instacart's error code,
// an unusable 200 response, or a network failure (StatusCode 0) after retries.
//
// StatusCode and Sent describe the call's last attempt, not any earlier one:
// whether a single-use authorization code may have been consumed depends on
// that attempt alone (see Unprocessed), because the client repeats such a
// request only after an attempt Connect turned away or that provably never
// left.
type Error struct {
	Path string // endpoint path, e.g. /v2/oauth/token
	// StatusCode is the last attempt's HTTP status; 0 if it got no answer
	// (a network error or a timeout), even if an earlier attempt got one.
	StatusCode int
	Code       string // Instacart's "error" code, e.g. invalid_client
	// Description is Instacart's error_description, credentials removed.
	// Error leaves it out: Connect may repeat in it what the request
	// carried (a user id, an authorization code), and error text travels to
	// logs and audit entries unhashed. Show it only where that is safe.
	Description string
	Attempts    int // HTTP attempts made, retries included
	// Sent: the last attempt (or part of it) may have been written to
	// Connect: it was answered, or the client cannot prove it wrote nothing.
	// False only when it provably wrote nothing (or no attempt was made).
	Sent bool
	// RetryAfter is how long the last answer asked the client to wait
	// (its Retry-After, as a 429 or 503 sends), for a caller that tries
	// again later; 0 when it did not say.
	RetryAfter time.Duration
	Err        error // underlying network or decoding error, if any

	// unusable is the token an unusable 200 named (see UnusableToken). A
	// pointer, and unexported, so no formatting of an Error prints it: fmt
	// shows a nested pointer as its address.
	unusable *Token
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "connect: POST %s", e.Path)
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	}
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	if e.unusable != nil { // never the token itself: errors end up in logs
		b.WriteString(" (the answer named a token, still live until revoked)")
	}
	return b.String()
}

// Unprocessed reports whether Connect provably did not process the call's
// last attempt: the attempt provably wrote nothing (Sent false, no status),
// or Connect answered it 429 or 503, which turn a request away unprocessed.
// Every other outcome (any other answer, 4xx included, a timeout after the
// request was written, a connection reset) means Connect may have
// processed it, so a single-use authorization code may have been consumed
// and sending it again would only earn invalid_grant. Earlier attempts do
// not matter: a single-use request is repeated only after an unprocessed one.
func (e *Error) Unprocessed() bool {
	if e.StatusCode == http.StatusTooManyRequests || e.StatusCode == http.StatusServiceUnavailable {
		return true
	}
	return !e.Sent && e.StatusCode == 0
}

// UnusableToken returns the token Connect named in a 200 answer the client
// could not use (Code ErrInvalidResponse): Connect minted it, nobody holds
// it, and it stays live until revoked or expired. The client does not revoke
// it itself, as one best-effort try would lose it whenever Connect is
// briefly unavailable: the caller should queue it for revocation with the
// credentials that minted it (the Client's), retrying until ExpiresAt. The
// Token has AccessToken, RequestedAt, ExpiresIn and ExpiresAt (other fields
// empty): ExpiresIn is Connect's expires_in, or the documented 24h lifetime
// when expires_in is unusable, counted from RequestedAt. ok is false when the
// answer named no token.
func (e *Error) UnusableToken() (tok Token, ok bool) {
	if e == nil || e.unusable == nil {
		return Token{}, false
	}
	return *e.unusable, true
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether trying again later may succeed: network failures,
// 408/429/5xx and success responses that broke off or were malformed.
// Everything else needs a person to fix the request, the role or the credentials.
func (e *Error) Temporary() bool {
	if e.Code == ErrInvalidResponse || e.StatusCode == http.StatusOK {
		return true
	}
	return e.StatusCode == 0 || transientStatus(e.StatusCode)
}

// Timeout reports whether the call ended because a deadline passed: the
// caller's context deadline or the per-attempt RequestTimeout.
func (e *Error) Timeout() bool {
	if errors.Is(e.Err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}

// Unreachable reports whether the call's last attempt could not reach the
// host at all because of where it was sent, not because Connect was
// briefly down: the host name does not resolve (DNS "no such host"), or
// nothing accepts connections there (connection refused). Both point at the
// base URL more than at Connect. why says which, in words fit for an error.
func (e *Error) Unreachable() (why string, ok bool) {
	if e == nil || e.StatusCode != 0 || e.Err == nil {
		return "", false
	}
	var dns *net.DNSError
	if errors.As(e.Err, &dns) && dns.IsNotFound {
		return fmt.Sprintf("no such host %q", dns.Name), true
	}
	if errors.Is(e.Err, syscall.ECONNREFUSED) {
		return "connection refused", true
	}
	return "", false
}

// CredentialsRejected reports whether Connect refused the application's
// credentials themselves (wrong or unknown client, or credentials that were
// exposed in a query string and must be rotated).
func (e *Error) CredentialsRejected() bool {
	return e.Code == ErrInvalidClient || e.Code == ErrQueryParamsForbidden
}

// AsError returns err as an *Error if it is one.
func AsError(err error) (*Error, bool) {
	var ce *Error
	ok := errors.As(err, &ce)
	return ce, ok
}

// IsTemporary reports whether err is a Connect failure worth retrying later.
func IsTemporary(err error) bool {
	ce, ok := AsError(err)
	return ok && ce.Temporary()
}

// newStatusError builds an Error from a non-200 response, reading Instacart's
// OAuth shape {"error","error_description"} or the API shape
// {"error":{"message","code"}}.
func newStatusError(path string, resp *http.Response, body []byte, attempts int, creds Credentials) *Error {
	e := &Error{Path: path, StatusCode: resp.StatusCode, Attempts: attempts}
	var oauth struct {
		Error       json.RawMessage `json:"error"`
		Description string          `json:"error_description"`
	}
	if json.Unmarshal(body, &oauth) == nil && len(oauth.Error) > 0 {
		var code string
		var api struct {
			Message string `json:"message"`
		}
		switch {
		case json.Unmarshal(oauth.Error, &code) == nil:
			e.Code, e.Description = code, oauth.Description
		case json.Unmarshal(oauth.Error, &api) == nil:
			e.Description = api.Message
		}
	}
	if e.Code == "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		e.Err = errRedirect // ours, so Error may say it
	}
	e.Code = truncate(redact(e.Code, creds), 64)
	e.Description = truncate(redact(e.Description, creds), maxDescription)
	return e
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
