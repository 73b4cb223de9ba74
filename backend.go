// Package instacart is a Vault secrets engine that mints Instacart Connect
// OAuth tokens. Vault keeps the Connect client id and secret; applications read
// leased tokens from creds/<role>.
package instacart

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/version"
)

// operationPrefixInstacart prefixes every OpenAPI operation id, e.g.
// instacart-read-credentials.
const operationPrefixInstacart = "instacart"

const backendHelp = `
The Instacart secrets engine mints Instacart Connect OAuth tokens.

Write the Connect application's client id and secret to "config", define roles
(a grant type and scopes each) under "roles/", and read leased tokens from
"creds/<role>". Shared tokens are reused until they near expiry, as Instacart
asks; exclusive tokens are minted per read and revoked when their lease ends.
`

// Factory returns a configured backend, as Vault's plugin interface requires.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, fmt.Errorf("setting up instacart backend: %w", err)
	}
	return b, nil
}

// backend holds in-memory copies of what storage holds (config, roles, shared
// tokens) so a cached read touches neither storage nor Connect. Invalidate keeps
// them coherent on replicas.
type backend struct {
	*framework.Backend

	// now is the clock, replaceable in tests.
	now func() time.Time

	// configMu serialises config writes and the first load; readers use engine.
	configMu sync.Mutex
	engine   atomic.Pointer[engine]

	// roleMu serialises role writes; readers use the roles cache.
	roleMu sync.Mutex
	roles  sync.Map // role name -> *role

	tokens tokenCache

	// longestLifetime is the longest token lifetime seen, in nanoseconds: how
	// long retired credentials must be kept to revoke tokens they minted.
	longestLifetime atomic.Int64
}

// engine is an immutable snapshot of the configuration and the Connect client
// built from it. A nil config means the engine has not been configured.
type engine struct {
	config *connectConfig
	client *connect.Client

	// rejected latches Connect's refusal of the credentials themselves, so
	// readers get the error at once instead of hammering Connect with
	// credentials that cannot work. A config write builds a new engine.
	rejected atomic.Pointer[rejection]
}

type rejection struct {
	err   error
	until time.Time
}

// credentialsRejectedHold is how long a credentials refusal is replayed
// without asking Connect again.
const credentialsRejectedHold = time.Minute

// mint asks Connect for a token unless Connect recently refused the
// credentials, and remembers the longest lifetime it hands out.
func (b *backend) mint(ctx context.Context, e *engine, req connect.TokenRequest) (*connect.Token, error) {
	now := b.now()
	if r := e.rejected.Load(); r != nil && now.Before(r.until) {
		return nil, r.err
	}
	tok, err := e.client.Token(ctx, req)
	if err != nil {
		if ce, ok := connect.AsError(err); ok && ce.CredentialsRejected() {
			e.rejected.Store(&rejection{err: err, until: now.Add(credentialsRejectedHold)})
		}
		return nil, err
	}
	b.noteLifetime(tok.ExpiresIn)
	return tok, nil
}

func newBackend() *backend {
	b := &backend{now: time.Now}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			// Seal-wrap the client secret where Vault supports it (Enterprise).
			SealWrapStorage: []string{configStoragePath},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{pathConfig(b)},
			pathRoles(b),
			[]*framework.Path{pathCreds(b), pathCache(b)},
		),
		Secrets:        []*framework.Secret{secretToken(b)},
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		RunningVersion: version.Version(),
	}
	return b
}

// invalidate drops in-memory copies of a storage entry another node changed.
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case key == configStoragePath:
		b.resetEngine()
	case strings.HasPrefix(key, roleStoragePrefix):
		b.roleMu.Lock()
		b.roles.Delete(strings.TrimPrefix(key, roleStoragePrefix))
		b.roleMu.Unlock()
	case strings.HasPrefix(key, tokenStoragePrefix):
		b.tokens.forget(key)
	}
}

// resetEngine forgets the configuration and every shared token held in
// memory; the next request reloads them from storage.
func (b *backend) resetEngine() {
	if old := b.engine.Swap(nil); old != nil && old.client != nil {
		old.client.Close()
	}
	b.tokens.clear()
}

func (b *backend) clean(context.Context) {
	b.resetEngine()
}

// getEngine returns the current configuration snapshot, loading it from
// storage on first use.
func (b *backend) getEngine(ctx context.Context, s logical.Storage) (*engine, error) {
	if e := b.engine.Load(); e != nil {
		return e, nil
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	if e := b.engine.Load(); e != nil {
		return e, nil
	}
	cfg, err := getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	e, err := b.newEngine(cfg)
	if err != nil {
		return nil, err
	}
	b.engine.Store(e)
	return e, nil
}

// newEngine builds the Connect client for cfg (nil cfg: not configured).
func (b *backend) newEngine(cfg *connectConfig) (*engine, error) {
	if cfg == nil {
		return &engine{}, nil
	}
	client, err := cfg.newClient(b.Logger().Named("connect"))
	if err != nil {
		return nil, err
	}
	return &engine{config: cfg, client: client}, nil
}

// configuredEngine is getEngine for paths that need credentials: an
// unconfigured engine is the operator's to fix, so it is a 400.
func (b *backend) configuredEngine(ctx context.Context, s logical.Storage) (*engine, *logical.Response, error) {
	e, err := b.getEngine(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	if e.config == nil {
		return nil, logical.ErrorResponse("the engine is not configured: write client_id and client_secret to %q first", configStoragePath), nil
	}
	return e, nil, nil
}

// noteLifetime remembers the longest token lifetime Connect has handed out.
func (b *backend) noteLifetime(d time.Duration) {
	for {
		cur := b.longestLifetime.Load()
		if int64(d) <= cur || b.longestLifetime.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// retention is how long retired credentials are kept: long enough for every
// token they minted to expire. Connect documents 24 h tokens ("The token is
// valid for 24 hours", Get started); a longer lifetime seen here wins.
func (b *backend) retention() time.Duration {
	return max(time.Duration(b.longestLifetime.Load()), 24*time.Hour)
}
