package main

// The mint floor: what a cold per-user read cannot avoid, and nothing more.
// One token request to Connect (the fake) with the fulfillment_user_assertion
// grant, as the real engine sends it; one storage write (the token record,
// keyed by the user); one leased response whose TTL is the token's remaining
// life. No storage read, no coalescing, no mint bound, no metrics, no
// retries: the bench compares our cold per-user read against this.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	floorSecretType = "noop_floor_token"
	floorConfigKey  = "floor/config"
)

// floorConfig is where the floor mints: the fake's base URL and the client
// credentials (stored once, at configuration, and kept in memory).
type floorConfig struct {
	BaseURL      string `json:"base_url"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

// floorRecord is the stored token record: what a per-user token store must
// keep to serve the user again.
type floorRecord struct {
	AccessToken string    `json:"access_token"`
	TokenType   string    `json:"token_type"`
	Scopes      []string  `json:"scopes"`
	UserID      string    `json:"user_id"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
}

type floor struct {
	mu     sync.RWMutex
	cfg    *floorConfig
	client *http.Client
}

func newFloor() *floor {
	// The same pool shape as the engine's Connect client (connect/retry.go).
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	}
	return &floor{client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (f *floor) paths(b *framework.Backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "floor/config",
			Fields: map[string]*framework.FieldSchema{
				"base_url":      {Type: framework.TypeString},
				"client_id":     {Type: framework.TypeString},
				"client_secret": {Type: framework.TypeString},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: f.writeConfig},
			},
		},
		{
			Pattern: "floor/creds/" + framework.GenericNameRegex("role"),
			Fields: map[string]*framework.FieldSchema{
				"role":    {Type: framework.TypeString},
				"user_id": {Type: framework.TypeString},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
					return f.creds(ctx, b, req, d)
				}},
			},
		},
	}
}

func (f *floor) writeConfig(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	cfg := &floorConfig{
		BaseURL:      strings.TrimRight(d.Get("base_url").(string), "/"),
		ClientID:     d.Get("client_id").(string),
		ClientSecret: d.Get("client_secret").(string),
	}
	if cfg.BaseURL == "" || cfg.ClientID == "" || cfg.ClientSecret == "" {
		return logical.ErrorResponse("base_url, client_id and client_secret are required"), nil
	}
	entry, err := logical.StorageEntryJSON(floorConfigKey, cfg)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.cfg = cfg
	f.mu.Unlock()
	return nil, nil
}

// config is the configuration in memory, read from storage once (after a
// plugin restart).
func (f *floor) config(ctx context.Context, s logical.Storage) (*floorConfig, error) {
	f.mu.RLock()
	cfg := f.cfg
	f.mu.RUnlock()
	if cfg != nil {
		return cfg, nil
	}
	entry, err := s.Get(ctx, floorConfigKey)
	if err != nil || entry == nil {
		return nil, errors.New("floor/config is not written")
	}
	cfg = new(floorConfig)
	if err := entry.DecodeJSON(cfg); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.cfg = cfg
	f.mu.Unlock()
	return cfg, nil
}

// creds is the floor of a cold per-user read: mint, store, lease.
func (f *floor) creds(ctx context.Context, b *framework.Backend, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	role, userID := d.Get("role").(string), d.Get("user_id").(string)
	if userID == "" {
		return logical.ErrorResponse("user_id is required"), nil
	}
	cfg, err := f.config(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	rec, err := f.mint(ctx, cfg, userID)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(userID))
	hash := hex.EncodeToString(sum[:])
	entry, err := logical.StorageEntryJSON("users/"+role+"/"+hash[:2]+"/"+hash, rec)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	remaining := time.Until(rec.ExpiresAt).Truncate(time.Second)
	if remaining <= 0 {
		return nil, errors.New("the token expires in under a second")
	}
	resp := b.Secret(floorSecretType).Response(map[string]any{
		"access_token": rec.AccessToken, "token_type": rec.TokenType, "scopes": rec.Scopes, "user_id": userID,
		"expires_at": rec.ExpiresAt.Format(time.RFC3339), "created_at": rec.CreatedAt.Format(time.RFC3339),
	}, map[string]any{"role": role, "expires_at": rec.ExpiresAt.Format(time.RFC3339Nano)})
	resp.Secret.TTL, resp.Secret.MaxTTL = remaining, remaining
	return resp, nil
}

// mint is one POST /v2/oauth/token with the body the engine sends
// (connect/token.go): JSON credentials, the grant, the scope and the
// assertion, standard base64 of {"user_id": "<id>"}.
func (f *floor) mint(ctx context.Context, cfg *floorConfig, userID string) (*floorRecord, error) {
	assertion, _ := json.Marshal(struct {
		UserID string `json:"user_id"`
	}{userID})
	body, _ := json.Marshal(map[string]string{
		"client_id": cfg.ClientID, "client_secret": cfg.ClientSecret, "grant_type": "fulfillment_user_assertion",
		"scope": "connect:recommendations", "assertion": base64.StdEncoding.EncodeToString(assertion),
	})
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.BaseURL+"/v2/oauth/token", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	sent := time.Now()
	resp, err := f.client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", errors.Unwrap(err)) // the URL is not a secret, but keep errors short
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("token request: HTTP %d", resp.StatusCode)
	}
	var tr struct {
		AccessToken string  `json:"access_token"`
		TokenType   string  `json:"token_type"`
		ExpiresIn   float64 `json:"expires_in"`
		CreatedAt   float64 `json:"created_at"`
		Scope       string  `json:"scope"`
	}
	if err := json.Unmarshal(raw, &tr); err != nil || tr.AccessToken == "" || tr.ExpiresIn <= 0 {
		return nil, errors.New("token response without a usable token")
	}
	return &floorRecord{
		AccessToken: tr.AccessToken, TokenType: tr.TokenType, Scopes: strings.Fields(strings.ReplaceAll(tr.Scope, ",", " ")), UserID: userID,
		CreatedAt: time.Unix(int64(tr.CreatedAt), 0).UTC(),
		ExpiresAt: sent.Add(time.Duration(tr.ExpiresIn * float64(time.Second))).UTC(),
	}, nil
}
