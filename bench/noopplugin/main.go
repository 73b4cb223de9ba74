// Command noopplugin is the benchmark's baseline: a secrets engine that does
// no work, so reads through it measure only Vault's and the plugin
// framework's own cost (gRPC hop, routing, lease bookkeeping); and, at
// floor/creds/<role>, the floor of a cold per-user read (floor.go).
package main

import (
	"context"
	"os"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

const secretType = "noop_token"

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	var b *framework.Backend
	fl := newFloor()
	b = &framework.Backend{
		BackendType: logical.TypeLogical,
		Paths: []*framework.Path{
			{
				Pattern: "leased",
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
						// Same shape as a creds response, so the payload size is comparable.
						resp := b.Secret(secretType).Response(map[string]any{
							"access_token": "noop-access-token-0123456789abcdef", "token_type": "Bearer",
							"scopes": []string{"connect:fulfillment"}, "expires_at": "2030-01-01T00:00:00Z", "created_at": "2029-12-31T00:00:00Z",
						}, map[string]any{"role": "bench"})
						resp.Secret.TTL = time.Hour
						return resp, nil
					}},
				},
			},
			{
				Pattern: "unleased",
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
						return &logical.Response{Data: map[string]any{"access_token": "noop-access-token-0123456789abcdef", "token_type": "Bearer"}}, nil
					}},
				},
			},
		},
		Secrets: []*framework.Secret{{
			Type:   floorSecretType,
			Fields: map[string]*framework.FieldSchema{},
			Revoke: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
				return nil, nil
			},
		}, {
			Type:   secretType,
			Fields: map[string]*framework.FieldSchema{},
			Renew: func(_ context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
				return &logical.Response{Secret: req.Secret}, nil
			},
			Revoke: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
				return nil, nil
			},
		}},
	}
	b.Paths = append(b.Paths, fl.paths(b)...)
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

func main() {
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		hclog.Default().Error("noopplugin: bad flags", "error", err)
		os.Exit(1)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		hclog.Default().Error("noopplugin: shutting down", "error", err)
		os.Exit(1)
	}
}
