package tokensource

import "time"

// An Option configures a [Source] (and the Sources of a [Pool]).
type Option func(*Source)

// WithEarlyRefresh sets how long before a token's expiry the Source re-reads
// the creds path: d before expiry, but never earlier than when three quarters
// of the token's life (as it was when read) have passed, so that a
// short-lived token is not re-read on every call. The default is
// [DefaultEarlyRefresh]. Zero re-reads only once the token has expired. The
// same margin applies to renewing a capped lease before it ends.
func WithEarlyRefresh(d time.Duration) Option {
	return func(s *Source) { s.margin = d }
}

// WithUserID makes the Source write {"user_id": id} to the path instead of
// reading it. Use it with fulfillment_user_assertion roles that let the
// caller choose the user (allowed_user_ids): the token is that user's. For
// many users, use a [Pool].
func WithUserID(id string) Option {
	return func(s *Source) { s.userID = id }
}

// WithRevokeOnClose makes [Source.Close] revoke the Vault leases of the
// tokens the Source read that have not yet expired, with
// PUT /v1/sys/leases/revoke/<lease_id>. The Vault token then needs update on
// sys/leases/revoke/<mount>/creds/<role>/* (examples/policies/app.hcl grants
// it). For an exclusive role that revokes the tokens at Connect too; for a
// shared role it only ends the leases, since others hold the token. Through
// Vault Proxy's cache, leave it off: the Proxy's cached lease is shared by
// every app that reads through it.
func WithRevokeOnClose() Option {
	return func(s *Source) { s.revokeOnClose = true }
}

// WithErrorHook has the Source call f with the error of every failed read of
// the creds path and every failed lease renewal, including those no caller
// sees: a failed early re-read while the current token is still valid (the
// Source keeps serving it and tries again later), a read whose callers gave
// up waiting, and a failed renewal (the Source then reads a new token). A
// [Pool] also passes it the errors of closing the Sources it evicts. f is
// called from a background goroutine, possibly from several at once; it
// should return quickly. The errors never contain a token.
//
// For example, to log them: WithErrorHook(func(err error) { slog.Warn("instacart token", "error", err) }).
func WithErrorHook(f func(error)) Option {
	return func(s *Source) { s.onError = f }
}
