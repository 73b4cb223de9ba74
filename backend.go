// Package instacart is a Vault secrets engine that mints Instacart Connect
// OAuth tokens. Vault keeps the Connect client id and secret; applications read
// leased tokens from creds/<role>.
package instacart

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/fairshare"
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
	// sleep waits d or until ctx ends (then returning its error): the
	// engine's own waits between retries, replaceable in tests.
	sleep func(ctx context.Context, d time.Duration) error

	// configMu serialises config writes, deletes and prunes and the first
	// load; readers use snapshot.
	configMu sync.Mutex
	snapshot atomic.Pointer[configSnapshot]
	// publishMu guards snapshotGen and publishing into snapshot: an invalidation
	// bumps snapshotGen, and a load that started before it must not publish the
	// configuration it read.
	publishMu   sync.Mutex
	snapshotGen uint64

	// roleLocks serialise, per role, writes and deletes (exclusive) against
	// loads and shared-token stores (shared), so a token minted for a role
	// that was deleted or changed meanwhile is never stored under it. Roles
	// are spread over stripes so work on one role (a large clean-up) does
	// not hold up the others.
	roleLocks [roleLockStripes]sync.RWMutex
	roles     sync.Map // role name -> *role

	tokens *tokenCache
	// sys is Vault's SystemView, as the framework sees it (write_safe.go).
	sys *stateView
	// counts are the tokens stored per role, queued those waiting in each
	// role's revocation queue (token_counts.go).
	counts *tokenCounts
	queued *queueCounts
	// claims give each queued revocation, and each role's queue, one owner
	// at a time (revocation_queue.go).
	claims *queueClaims
	// legacyUserKeys is set while storage may still hold per-user tokens at
	// the previous release's keys (legacy_layout.go).
	legacyUserKeys atomic.Bool

	bg *background // work outside requests (background.go)

	// mintSlots bound token requests in flight, shared fairly by role and
	// sized by the current config (mint.go); throttle holds token requests
	// (not revocations) back after a 429. Both belong to the mount,
	// whatever client is used.
	mintSlots *fairshare.Slots
	throttle  connect.Throttle

	hooks *testHooks // nil but in tests (test_hooks.go)

	// codeMu serialises claiming authorization codes (code_records.go).
	codeMu sync.Mutex

	// tidyRuns is the pass running and the last (tidy_pass.go); tidyPace
	// paces every pass by storage's latency (tidy_pace.go).
	tidyRuns tidyRuns
	tidyPace *tidyPacer

	// lastTidy is when the periodic function last started (or joined) a
	// background tidy pass (unix nanoseconds).
	lastTidy atomic.Int64

	// longestLifetime is the longest token lifetime seen, in nanoseconds: how
	// long retired credentials must be kept to revoke tokens they minted.
	longestLifetime atomic.Int64

	// metrics is this mount's registry and Connect observer (metrics.go).
	metrics *metrics
}

// configSnapshot is an immutable snapshot of the configuration and the
// Connect client built from it. Without a client the mount is not configured.
type configSnapshot struct {
	config *connectConfig
	client *connect.Client

	// rejected latches Connect's refusal of the credentials themselves, so
	// readers get the error at once instead of hammering Connect with
	// credentials that cannot work. A config write builds a new snapshot.
	rejected atomic.Pointer[rejection]
}

func newBackend() *backend {
	b := &backend{now: time.Now, sleep: sleepCtx, mintSlots: fairshare.New(defaultMaxConcurrentMints), tokens: newTokenCache(tokenCacheSize), counts: newTokenCounts(), queued: newQueueCounts(), claims: newQueueClaims(), bg: newBackground(), tidyPace: newTidyPacer(time.Now, sleepCtx)}
	b.legacyUserKeys.Store(true)
	b.metrics = newBackendMetrics(b)
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			// Seal-wrap where Vault supports it (Enterprise): the client
			// secret, live bearer tokens, and tokens briefly held in the WAL.
			SealWrapStorage: []string{configStoragePath, tokenStoragePrefix, userTokenStoragePrefix, revokingStoragePrefix, framework.WALPrefix},
			// A WAL entry is the node's own unfinished work: it is not
			// replicated, as in every HashiCorp engine.
			LocalStorage: []string{framework.WALPrefix},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{pathConfig(b)},
			pathRoles(b),
			[]*framework.Path{pathCreds(b), pathCache(b), pathTidy(b), pathMetrics(b)},
		),
		Secrets:        []*framework.Secret{secretToken(b)},
		InitializeFunc: b.initialize,
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		PeriodicFunc:   b.periodic,
		WALRollback:    b.walRollback,
		RunningVersion: version.Version(),
	}
	return b
}

// invalidate drops in-memory copies of a storage entry another node changed.
func (b *backend) invalidate(_ context.Context, key string) {
	// Another node wrote: this process is no longer the only writer.
	b.tokens.view.drop()
	switch {
	case key == configStoragePath:
		b.resetSnapshot()
		b.metrics.invalidateGauges()
	case strings.HasPrefix(key, roleStoragePrefix):
		name := strings.TrimPrefix(key, roleStoragePrefix)
		mu := b.roleLock(name)
		mu.Lock() // no load in flight may put the old role back
		b.roles.Delete(name)
		mu.Unlock()
		b.metrics.roleChanged(name) // written or deleted: the next scrape tells
	case strings.HasPrefix(key, tokenStoragePrefix), strings.HasPrefix(key, userTokenStoragePrefix):
		b.tokens.forget(key)
	}
}

// initialize runs when Vault mounts the engine or starts it on the active
// node. A mount with no tokens stored or queued has nothing to count or
// move; one with tokens gets a tidy pass in the background, which counts them
// (for the gauges), moves the previous release's per-user tokens, and
// resumes a pass cut short.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	state, ok := b.writeSafe(ctx)
	if !ok {
		return nil
	}
	epoch := b.tokens.view.epoch()
	roles, err := tokenRoles(ctx, req.Storage)
	if err != nil {
		return err
	}
	cur, err := getJSON[tidyCursor](ctx, req.Storage, tidyCursorPath)
	if err != nil {
		return err
	}
	queues, err := req.Storage.List(ctx, revokingStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing revocation queues: %w", err)
	}
	if len(queues) == 0 {
		b.queued.markEmpty() // else the retry passes count them, within minutes
	}
	if len(roles) == 0 && cur == nil {
		b.counts.finishPass(nil)
		b.legacyUserKeys.Store(false)
		b.tokens.view.build(epoch, state)    // no token stored: from here on, only ours
		b.lastTidy.Store(b.now().UnixNano()) // nothing stored: the first pass is due in an hour
		return nil
	}
	b.startTidy(req.Storage)
	b.lastTidy.Store(b.now().UnixNano())
	return nil
}

// resetSnapshot forgets the configuration and every shared token held in
// memory; the next request reloads them from storage.
func (b *backend) resetSnapshot() {
	b.publishSnapshot(nil)
	b.tokens.clear()
}

// publishSnapshot replaces the current snapshot, bumping the generation so a load
// that read storage before this point cannot publish over it.
func (b *backend) publishSnapshot(snap *configSnapshot) {
	b.publishMu.Lock()
	b.snapshotGen++
	old := b.snapshot.Swap(snap)
	b.sizeMintSlots(snap)
	b.publishMu.Unlock()
	if old != nil && old != snap && old.client != nil {
		old.client.Close()
	}
}

func (b *backend) clean(context.Context) {
	b.stopBackground() // background tidy and clean-ups end with the mount
	b.tokens.view.drop()
	b.resetSnapshot()
}

// getSnapshot returns the current configuration snapshot, loading it from
// storage on first use.
func (b *backend) getSnapshot(ctx context.Context, s logical.Storage) (*configSnapshot, error) {
	if snap := b.snapshot.Load(); snap != nil {
		return snap, nil
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	if snap := b.snapshot.Load(); snap != nil {
		return snap, nil
	}
	b.publishMu.Lock()
	gen := b.snapshotGen
	b.publishMu.Unlock()

	cfg, err := getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	snap, err := b.newSnapshot(cfg)
	if err != nil {
		return nil, err
	}
	b.publishMu.Lock()
	defer b.publishMu.Unlock()
	if b.snapshotGen != gen {
		// The config changed while it was being read: serve this request
		// with what was read, but leave the cache empty for the next one.
		return snap, nil
	}
	b.snapshot.Store(snap)
	b.sizeMintSlots(snap)
	return snap, nil
}

// newSnapshot builds the Connect client for cfg. Without current credentials
// (no config, or a deleted one still holding retired credentials) it has no
// client and paths that mint answer "not configured".
func (b *backend) newSnapshot(cfg *connectConfig) (*configSnapshot, error) {
	if !cfg.configured() {
		return &configSnapshot{config: cfg}, nil
	}
	client, err := b.newClient(cfg)
	if err != nil {
		return nil, err
	}
	return &configSnapshot{config: cfg, client: client}, nil
}

// configuredSnapshot is getSnapshot for paths that need credentials: an
// unconfigured mount is the operator's to fix, so it is a 400.
func (b *backend) configuredSnapshot(ctx context.Context, s logical.Storage) (*configSnapshot, *logical.Response, error) {
	snap, err := b.getSnapshot(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	if snap.client == nil {
		return nil, logical.ErrorResponse("the engine is not configured: write client_id and client_secret to %q first", configStoragePath), nil
	}
	return snap, nil, nil
}

// clock reads b.now at call time, so a client built earlier follows the
// backend's clock (tests move it).
func (b *backend) clock() time.Time { return b.now() }

// periodic runs on Vault's rollback timer (every minute).
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	if now := b.now(); now.Sub(time.Unix(0, b.lastTidy.Load())) >= tidyInterval {
		// Vault runs this under its rollback deadline (90 s): a tidy of a
		// million tokens runs beside it instead.
		b.startTidy(req.Storage)
		b.lastTidy.Store(now.UnixNano())
	}
	_, pruneErr := b.pruneConfig(ctx, req.Storage)
	return errors.Join(
		pruneErr,
		b.pruneCodes(ctx, req.Storage),
		b.retryRevocations(ctx, req.Storage),
	)
}

// roleLockStripes is how many locks the roles are spread over.
const roleLockStripes = 64

// roleLock is the lock of one role's stripe.
func (b *backend) roleLock(name string) *sync.RWMutex {
	return &b.roleLocks[stripeOf(name, roleLockStripes)]
}

// newClient builds a Connect client for cfg's host and credentials, sharing
// the mount's clock, metrics and 429 throttle.
func (b *backend) newClient(cfg *connectConfig) (*connect.Client, error) {
	cc := connect.Config{
		BaseURL:        cfg.BaseURL,
		Credentials:    connect.Credentials{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret},
		RequestTimeout: cfg.RequestTimeout,
		MaxRetries:     cfg.MaxRetries,
		Now:            b.clock,
		Observer:       b.metrics,
		Throttle:       &b.throttle,
		Logger:         b.Logger().Named("connect"),
	}
	b.hooks.adjustConnect(&cc)
	client, err := connect.New(cc)
	if err != nil {
		return nil, fmt.Errorf("building Connect client: %w", err)
	}
	return client, nil
}
