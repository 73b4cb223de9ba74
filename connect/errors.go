package connect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
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

// maxDescription bounds how much of Connect's error text we carry into errors.
const maxDescription = 200

// Error is a failed Connect call: an error status with Instacart's error code,
// an unusable 200 response, or a network failure (StatusCode 0) after retries.
type Error struct {
	Path        string // endpoint path, e.g. /v2/oauth/token
	StatusCode  int    // last HTTP status seen; 0 if no response arrived
	Code        string // Instacart's "error" code, e.g. invalid_client
	Description string // Instacart's error_description, credentials removed
	Attempts    int    // HTTP attempts made, retries included
	// Sent: the request (or part of it) was written to Connect, so a
	// single-use authorization code may have been consumed. It is also set
	// when the client cannot prove an attempt wrote nothing.
	Sent bool
	Err  error // underlying network or decoding error, if any
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
	if e.Description != "" {
		fmt.Fprintf(&b, ": %s", e.Description)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	return b.String()
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
		e.Description = "unexpected redirect (not followed, credentials stay here)"
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
