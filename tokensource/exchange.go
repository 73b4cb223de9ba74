package tokensource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

// An Exchanger exchanges authorization codes for tokens through an
// authorization_code role (account linking). A [Source] cannot serve such a
// role: every read needs a fresh authorization code, which Instacart hands
// the app once per user consent, and a code is single-use (the engine
// refuses a code it has sent before). So the app calls [Exchanger.Exchange]
// once per code and keeps the token it gets for that user.
//
// The token's Vault lease is exclusive: when it ends (or is revoked, see
// [Exchanger.Revoke]), the engine revokes the token at Connect. Its Expiry is
// the earlier of the token's expires_at and the lease's end.
type Exchanger struct {
	client *api.Client
	path   string
	now    func() time.Time
}

// NewExchanger returns an Exchanger for path, the creds path of an
// authorization_code role (for example "instacart/creds/linking"). It does
// not contact Vault.
func NewExchanger(client *api.Client, path string) (*Exchanger, error) {
	if client == nil {
		return nil, errors.New("tokensource: nil Vault client")
	}
	path = cleanPath(path)
	if path == "" {
		return nil, errors.New("tokensource: empty creds path")
	}
	return &Exchanger{client: client, path: path, now: time.Now}, nil
}

// Exchange writes {"code": code} to the creds path and returns the token,
// with the same Extra as [Source.TokenContext]'s ("lease_id" among them).
// ctx bounds the request. Errors never contain the code or a token. A code
// whose exchange failed after it reached Connect is spent: get a new one
// from Instacart (the error says so).
func (e *Exchanger) Exchange(ctx context.Context, code string) (*oauth2.Token, error) {
	if code == "" {
		return nil, errors.New("tokensource: empty authorization code")
	}
	start := e.now()
	sec, err := e.client.Logical().WriteWithContext(ctx, e.path, map[string]any{"code": code})
	if err != nil {
		return nil, fmt.Errorf("tokensource: exchanging a code at %s: %w", e.path, err)
	}
	c, err := fromSecret(e.path, sec, start, e.now())
	if err != nil {
		return nil, err
	}
	return c.tok, nil
}

// Revoke revokes the Vault lease of tok, a token from [Exchanger.Exchange]
// (its Extra "lease_id"), with PUT sys/leases/revoke/<lease_id>; the engine
// then revokes the token at Connect. Use it when the user unlinks their
// account.
func (e *Exchanger) Revoke(ctx context.Context, tok *oauth2.Token) error {
	if tok == nil {
		return errors.New("tokensource: nil token")
	}
	id, _ := tok.Extra("lease_id").(string)
	if id == "" {
		return errors.New("tokensource: the token has no lease_id")
	}
	return revokeLease(ctx, e.client, id)
}
