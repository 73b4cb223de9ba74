package instacart

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

func pathConfig(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: configStoragePath,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
		},
		Fields: map[string]*framework.FieldSchema{
			"client_id": {
				Type:         framework.TypeString,
				Description:  "Client id of the Instacart Connect application.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Client ID"},
			},
			"client_secret": {
				Type:         framework.TypeString,
				Description:  "Client secret of the Instacart Connect application. Write-only: never returned.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Client secret", Sensitive: true},
			},
			"base_url": {
				Type:         framework.TypeString,
				Description:  "Connect host. Must be https://; http:// only for loopback hosts (local fakes).",
				Default:      connect.DefaultBaseURL,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Base URL"},
			},
			"request_timeout": {
				Type:         framework.TypeDurationSecond,
				Description:  "Timeout of each HTTP request to Connect, as a duration (10s) or seconds; reads give seconds (10).",
				Default:      int(connect.DefaultRequestTimeout.Seconds()),
				DisplayAttrs: &framework.DisplayAttributes{Name: "Request timeout"},
			},
			"max_concurrent_mints": {
				Type:         framework.TypeInt,
				Description:  fmt.Sprintf("Token requests to Connect in flight at once, 1 to %d; more wait (within their request's deadline).", maxMaxConcurrentMints),
				Default:      defaultMaxConcurrentMints,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Max concurrent mints"},
			},
			"max_retries": {
				Type:         framework.TypeInt,
				Description:  fmt.Sprintf("Retries of transient Connect failures (408, 429, 5xx, network errors), 0 to %d.", maxMaxRetries),
				Default:      connect.DefaultMaxRetries,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Max retries"},
			},
			"renew_by": renewByField,
			"verify": {
				Type:         framework.TypeBool,
				Description:  "Before saving new credentials, mint a client_credentials token with them; refuse the write if Connect rejects them. Not stored.",
				Default:      true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Verify"},
			},
		},
		ExistenceCheck: b.configExists,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
			},
			logical.CreateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathConfigDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "configuration"},
			},
		},
		HelpSynopsis:    "Configure the Instacart Connect application credentials.",
		HelpDescription: pathConfigHelp,
	}
}

const pathConfigHelp = `
Stores the Connect application's client_id and client_secret, the Connect host
(base_url) and how upstream calls are made (request_timeout, max_retries).
client_secret is write-only, and a write that changes base_url or client_id
must carry it too, so the stored secret is never sent to a host it was not
written for. When the credentials change or the config is deleted, the
previous ones are kept only to revoke tokens they minted until those expire;
shared tokens minted with them are no longer handed out.
`

func (b *backend) configExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	cfg, err := getConfig(ctx, req.Storage)
	return cfg.configured(), err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || !cfg.configured() {
		return nil, requestError("config read", err)
	}
	resp := &logical.Response{Data: map[string]any{
		"client_id":            cfg.ClientID,
		"client_secret_set":    cfg.ClientSecret != "",
		"base_url":             cfg.BaseURL,
		"request_timeout":      int64(cfg.RequestTimeout.Seconds()),
		"max_retries":          cfg.MaxRetries,
		"max_concurrent_mints": cfg.mintBound(),
	}}
	addRenewBy(resp, cfg, b.now())
	return resp, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly // forward before verify sends anything
	}
	defer b.metrics.invalidateGauges() // the next scrape shows the new config
	in, problem := configInputFrom(d)
	if problem != "" {
		return logical.ErrorResponse(problem), nil
	}
	resp, err := b.configure(ctx, req.Storage, in)
	return resp, requestError("config write", err)
}

// configInputFrom reads a config write's fields, as given.
func configInputFrom(d *framework.FieldData) (in configInput, problem string) {
	str := func(k string) *string {
		if v, ok := d.GetOk(k); ok {
			s := v.(string)
			return &s
		}
		return nil
	}
	integer := func(k string) *int {
		if v, ok := d.GetOk(k); ok {
			n := v.(int)
			return &n
		}
		return nil
	}
	in.clientID, in.clientSecret, in.baseURL = str("client_id"), str("client_secret"), str("base_url")
	if in.clientID != nil {
		*in.clientID = strings.TrimSpace(*in.clientID)
	}
	if n := integer("request_timeout"); n != nil {
		t := time.Duration(*n) * time.Second
		in.requestTimeout = &t
	}
	in.maxConcurrentMints, in.maxRetries = integer("max_concurrent_mints"), integer("max_retries")
	in.verify = d.Get("verify").(bool)
	renewBy, given, problem := renewByInput(d)
	if given {
		in.renewBy = &renewBy
	}
	return in, problem
}

// pathConfigDelete removes the current credentials. Exclusive tokens they
// minted may still be live at Connect, so, as a rotation does, it keeps them
// (never returned) as retired until those tokens have expired; lease
// revocations can still reach Connect, and the periodic prune drops them.
func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return nil, requestError("config delete", b.deleteConfig(ctx, req.Storage))
}
