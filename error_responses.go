package instacart

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// connectErrorAdvice says, per Instacart error code, what went wrong and who
// must act, for the OAuth error codes Instacart Connect documents.
var connectErrorAdvice = map[string]string{
	connect.ErrInvalidClient:        "Connect refused the client_id/client_secret at config: check them, or write the rotated credentials Instacart issued",
	connect.ErrQueryParamsForbidden: "Connect saw the credentials in a query string and considers them exposed: ask Instacart to rotate them and write the new ones to config",
	connect.ErrInvalidGrant:         "Connect refused the grant: the authorization code is invalid, expired or already used, the redirect_uri differs from the one registered with Instacart, or the user assertion was refused",
	connect.ErrInvalidScope:         "Connect refused the role's scopes: they must be enabled for the application and belong to the role's grant",
	connect.ErrInvalidRequest:       "Connect called the request malformed",
	connect.ErrUnsupportedGrantType: "Connect does not support this grant for the application",
	connect.ErrUnauthorizedClient:   "Connect says these credentials may not do this (a token can only be revoked by the application that minted it)",
}

// upstreamError turns a Connect failure into what Vault should answer:
// problems a person must fix become a 400 naming Instacart's error code (never
// quoting Connect's error_description, which may repeat the user id or code
// the request carried: Vault's audit log does not HMAC error text);
// no answer in time (a deadline, or every attempt timing out) is a 504;
// a host that does not resolve or refuses connections is a 502 that names
// base_url, since the address is the likelier fault than Connect; other transient trouble (after retries) is a 502 so callers retry later.
// Errors that are not Connect's (storage, a changed role) pass through.
func upstreamError(err error) (*logical.Response, error) {
	ce, ok := connect.AsError(err)
	switch {
	case !ok && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
		return nil, logical.CodedError(http.StatusGatewayTimeout, fmt.Sprintf("no answer from Instacart Connect in time: %v", err))
	case !ok:
		return nil, err
	case ce.Timeout():
		return nil, logical.CodedError(http.StatusGatewayTimeout, fmt.Sprintf("no answer from Instacart Connect in time (POST %s: %s)", ce.Path, connectSummary(ce)))
	case unreachable(ce) != "":
		return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("%s (POST %s: %s)", unreachable(ce), ce.Path, connectSummary(ce)))
	case ce.Temporary():
		return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("Instacart Connect is unavailable, try again later (POST %s: %s)", ce.Path, connectSummary(ce)))
	}
	advice, known := connectErrorAdvice[ce.Code]
	switch {
	case known:
	case ce.StatusCode >= 300 && ce.StatusCode < 400:
		advice = "Connect answered with a redirect, which is never followed (the request carries the credentials): check config base_url"
	default:
		advice = "Connect refused the request"
	}
	code := ce.Code
	if code == "" {
		code = http.StatusText(ce.StatusCode)
	}
	return logical.ErrorResponse(fmt.Sprintf("Instacart Connect answered %d %s: %s", ce.StatusCode, code, advice)), nil
}

// unreachable says, for a call that could not reach its host at all, that
// config base_url is the likely culprit; "" for any other failure.
func unreachable(ce *connect.Error) string {
	why, ok := ce.Unreachable()
	if !ok {
		return ""
	}
	if strings.HasPrefix(why, "connection refused") {
		return "config base_url cannot be reached: nothing accepts connections there (connection refused); check base_url, or whether Connect is up at that address"
	}
	return fmt.Sprintf("config base_url cannot be reached: %s (DNS); check base_url at config", why)
}

// readError gives every failure of a creds read a status and a sentence: a
// wait for a mint slot that ran out is a 504; the rest as requestError says.
func readError(err error) error {
	if err == nil {
		return nil // before anything is allocated: the cached read calls this
	}
	var coded logical.HTTPCodedError
	if errors.Is(err, errMintQueue) && !errors.As(err, &coded) {
		return logical.CodedError(http.StatusGatewayTimeout, "no token request slot came free in time (config max_concurrent_mints); try again")
	}
	return requestError("read", err)
}

// renewError is requestError for a lease renewal, whose only failures are
// storage's: checking the lease's token can read the role, the config and
// the stored token (renewal.go).
func renewError(err error) error { return requestError("renewal", err) }

// requestError gives every failure of a request (what names it: "read",
// "role write") a status and a sentence: coded errors and a write refused on
// a standby (which Vault must see as logical.ErrReadOnly to forward the
// request) pass as they are; a request that ran out of time is a 504;
// anything else (storage trouble) is a 503, never a bare 500.
func requestError(what string, err error) error {
	if err == nil {
		return nil
	}
	var coded logical.HTTPCodedError
	switch {
	case errors.Is(err, logical.ErrReadOnly) || errors.As(err, &coded):
		return err
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return logical.CodedError(http.StatusGatewayTimeout, fmt.Sprintf("the %s ran out of time: %v", what, err))
	}
	return logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf("the secrets engine could not complete the %s, try again: %v", what, err))
}

// mintError is upstreamError for a token request. An authorization code is
// single-use: once a request carrying it reached Connect and no usable answer
// came back, Connect may have spent it, so it is never sent again and the
// caller is told to get a new one rather than to retry.
func mintError(err error, g connect.GrantType) (*logical.Response, error) {
	ce, isConnect := connect.AsError(err)
	if g != connect.GrantAuthorizationCode || !codeMayBeConsumed(err) || (isConnect && !ce.Temporary()) {
		return upstreamError(err) // not a code, provably unspent, or Connect's own refusal
	}
	status := http.StatusBadGateway
	if !isConnect || ce.Timeout() {
		status = http.StatusGatewayTimeout
	}
	return nil, logical.CodedError(status, fmt.Sprintf("Instacart Connect gave no usable answer after the authorization code was sent (%s); the code may have been consumed, so it was not sent again: get a new code from Instacart and try again", errorSummary(err)))
}

// codeMayBeConsumed reports whether a failed token request may have spent
// its authorization code, judged by the fate of its last attempt only: the
// code is free again only when that attempt provably wrote nothing, or
// Connect turned it away unprocessed (429, 503), or it never left the queue.
// Any other answer, 4xx included, means Connect processed it; a caller that
// stopped waiting while it was in flight cannot know.
func codeMayBeConsumed(err error) bool {
	if errors.Is(err, errMintQueue) || errors.Is(err, errShuttingDown) {
		return false // still queued: nothing was sent
	}
	ce, ok := connect.AsError(err)
	if !ok {
		return true // the caller gave up while the request was in flight, or worse
	}
	return !ce.Unprocessed()
}

// connectSummary says what Connect answered in words fit for logs and
// warnings: the status, Instacart's error code and the attempts, but not
// Connect's own description, which could echo what the request carried.
func connectSummary(ce *connect.Error) string {
	what := "no answer"
	switch {
	case ce.StatusCode != 0:
		what = strings.TrimSpace(fmt.Sprintf("HTTP %d %s", ce.StatusCode, ce.Code))
	case ce.Err != nil: // the network's words (refused, reset, timed out), not Connect's
		what = "no answer: " + ce.Err.Error()
	}
	if ce.Attempts > 1 {
		what += fmt.Sprintf(" after %d attempts", ce.Attempts)
	}
	return what
}

// errorSummary is connectSummary for any error: others are said as they are.
func errorSummary(err error) string {
	if ce, ok := connect.AsError(err); ok {
		return connectSummary(ce)
	}
	return err.Error()
}
