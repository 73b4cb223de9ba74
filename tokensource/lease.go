package tokensource

// This file is the lease a Source holds: reading creds, renewing a capped
// lease, and the leases to revoke on Close.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

// current is the token being handed out, and its lease.
type current struct {
	tok       *oauth2.Token // Expiry: the earlier of leaseEnd and expiresAt
	refreshAt time.Time     // when to re-read or renew
	leaseID   string
	leaseEnd  time.Time // zero: no lease
	expiresAt time.Time // the token's own expiry (expires_at); zero: not given
	renewable bool
	extra     map[string]any
}

type lease struct {
	id     string
	expiry time.Time
}

// capped says the lease ends well before the token does and can be renewed.
func (c *current) capped() bool {
	return c.renewable && c.leaseID != "" && !c.leaseEnd.IsZero() && !c.expiresAt.IsZero() &&
		c.expiresAt.Sub(c.leaseEnd) > capSlack
}

// read reads (or, with a user id, writes) the creds path once. With
// replaces (a token Connect refused), the request names that token's lease
// in replacesHeader, so that Vault Proxy's cache does not answer it.
func (s *Source) read(replaces *current) (*current, error) {
	start := s.now()
	var hdr http.Header
	if replaces != nil {
		id := replaces.leaseID
		if id == "" { // no lease to name: any value unique to this read will do
			id = rand.Text()
		}
		hdr = http.Header{replacesHeader: {id}}
	}
	var (
		sec *api.Secret
		err error
	)
	if s.userID != "" {
		sec, err = s.client.Logical().WriteWithRequest(s.ctx, api.NewLogicalWriteRequest(s.path, map[string]any{"user_id": s.userID}, hdr))
	} else {
		// ReadWithRequest, unlike ReadWithContext, does not apply the
		// client's timeout itself.
		ctx, cancel := s.ctx, context.CancelFunc(func() {})
		if t := s.client.ClientTimeout(); t > 0 {
			ctx, cancel = context.WithTimeout(ctx, t)
		}
		sec, err = s.client.Logical().ReadWithRequest(ctx, api.NewLogicalReadRequest(s.path, nil, hdr))
		cancel()
	}
	if err != nil {
		return nil, fmt.Errorf("tokensource: reading %s: %w", s.path, err)
	}
	return fromSecret(s.path, sec, start, s.now())
}

// renew extends the current token's capped lease towards the token's
// expires_at with PUT sys/leases/renew/<lease_id>, by the role's ttl.
func (s *Source) renew(cur *current) (*current, error) {
	start := s.now()
	// No increment: Vault then extends by the role's ttl (up to the token's
	// expiry), so a lease its app stopped renewing still ends within a ttl,
	// as the operator chose. An increment would override the ttl.
	sec, err := s.client.Logical().WriteWithContext(s.ctx, "sys/leases/renew/"+cur.leaseID, map[string]any{})
	if err != nil {
		return nil, fmt.Errorf("tokensource: renewing the lease %s of the token from %s: %w", cur.leaseID, s.path, err)
	}
	if sec == nil || sec.LeaseDuration <= 0 {
		return nil, fmt.Errorf("tokensource: renewing the lease %s of the token from %s: the answer has no lease duration", cur.leaseID, s.path)
	}
	end := start.Add(time.Duration(sec.LeaseDuration) * time.Second)
	if end.After(cur.expiresAt) {
		end = cur.expiresAt
	}
	if !end.After(cur.leaseEnd.Add(time.Second)) {
		return nil, errNotExtended
	}
	next := *cur
	next.leaseEnd, next.renewable = end, sec.Renewable
	next.extra = make(map[string]any, len(cur.extra))
	for k, v := range cur.extra {
		next.extra[k] = v
	}
	next.extra["lease_duration"] = sec.LeaseDuration
	next.tok = next.token()
	return &next, nil
}

// fromSecret maps a creds answer read at start (by the local clock) to a
// token whose Expiry is the earlier of expires_at and the lease's end.
func fromSecret(path string, sec *api.Secret, start, now time.Time) (*current, error) {
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("tokensource: reading %s: no secret there (is the path a role's creds path?)", path)
	}
	access, _ := sec.Data["access_token"].(string)
	if access == "" {
		return nil, fmt.Errorf("tokensource: reading %s: the answer has no access_token", path)
	}
	c := &current{leaseID: sec.LeaseID, renewable: sec.Renewable}
	if at, ok := sec.Data["expires_at"].(string); ok && at != "" {
		var err error
		if c.expiresAt, err = time.Parse(time.RFC3339, at); err != nil {
			return nil, fmt.Errorf("tokensource: reading %s: expires_at is not RFC 3339: %w", path, err)
		}
	}
	if sec.LeaseDuration > 0 {
		c.leaseEnd = start.Add(time.Duration(sec.LeaseDuration) * time.Second)
	}
	if c.expiresAt.IsZero() && c.leaseEnd.IsZero() {
		return nil, fmt.Errorf("tokensource: reading %s: the answer has neither expires_at nor a lease", path)
	}
	typ, _ := sec.Data["token_type"].(string)
	if typ == "" {
		typ = "Bearer"
	}
	c.extra = map[string]any{"lease_id": sec.LeaseID, "lease_duration": sec.LeaseDuration}
	for _, k := range []string{"scopes", "created_at", "user_id"} {
		if v, ok := sec.Data[k]; ok {
			c.extra[k] = v
		}
	}
	c.tok = (&oauth2.Token{AccessToken: access, TokenType: typ}).WithExtra(c.extra)
	c.tok.Expiry = c.end()
	if !now.Before(c.tok.Expiry) {
		return nil, fmt.Errorf("tokensource: reading %s: the token expires at %s, already past by this machine's clock (is it ahead of Vault's?)",
			path, c.tok.Expiry.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// end is the earlier of the lease's end and the token's expiry.
func (c *current) end() time.Time {
	switch {
	case c.leaseEnd.IsZero():
		return c.expiresAt
	case c.expiresAt.IsZero() || c.leaseEnd.Before(c.expiresAt):
		return c.leaseEnd
	}
	return c.expiresAt
}

// token is the token with the current lease's end and extras.
func (c *current) token() *oauth2.Token {
	t := (&oauth2.Token{AccessToken: c.tok.AccessToken, TokenType: c.tok.TokenType}).WithExtra(c.extra)
	t.Expiry = c.end()
	return t
}

// revokeLease revokes a lease with the lease id in the URL, which a policy
// can confine to a role's leases (the body form needs sys/leases/revoke for
// every lease).
func revokeLease(ctx context.Context, client *api.Client, id string) error {
	if _, err := client.Logical().WriteWithContext(ctx, "sys/leases/revoke/"+id, map[string]any{}); err != nil {
		return fmt.Errorf("tokensource: revoking lease %s: %w", id, err)
	}
	return nil
}

// liveLeases drops the leases that have expired by now; it reuses ls.
func liveLeases(ls []lease, now time.Time) []lease {
	out := ls[:0]
	for _, l := range ls {
		if now.Before(l.expiry) {
			out = append(out, l)
		}
	}
	return out
}

// dropLease removes the lease with id from ls (it was revoked); it reuses ls.
func dropLease(ls []lease, id string) []lease {
	out := ls[:0]
	for _, l := range ls {
		if l.id != id {
			out = append(out, l)
		}
	}
	return out
}

// recordLease adds l, or with renewed moves the end of the lease with its id.
func recordLease(ls []lease, l lease, renewed bool) []lease {
	if renewed {
		for i := range ls {
			if ls[i].id == l.id {
				ls[i].expiry = l.expiry
				return ls
			}
		}
	}
	return append(ls, l)
}
