package instacart

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// gaugeRefreshInterval bounds how often a scrape rebuilds the gauges from
// storage (a read per role and a list of the revocation queue), so anyone who
// may read metrics cannot make every scrape do it. A config or role write
// (here, or on another node: an invalidation) makes the next scrape rebuild
// them whatever their age. The stored-token counts are kept in memory
// (token_counts.go) and set at every scrape: no scrape lists tokens.
const gaugeRefreshInterval = time.Minute

// scrape renders the registry in Prometheus' text format, after rebuilding
// the gauges from what storage holds (at most once per gaugeRefreshInterval,
// and at the first scrape after a config or role write). A rebuild that fails
// on storage does not fail the scrape: the counters are served, with the
// gauges as last rebuilt, and the failure is counted and logged.
func (m *metrics) scrape(ctx context.Context, b *backend, s logical.Storage) ([]byte, error) {
	m.scrapeMu.Lock()
	defer m.scrapeMu.Unlock()
	now, gen := b.now(), m.gaugeGen.Load()
	if m.gaugesAt.IsZero() || now.Sub(m.gaugesAt) >= gaugeRefreshInterval || gen != m.gaugesGen {
		suspects := m.takeSuspects()
		g, err := m.readGauges(ctx, b, s)
		if err != nil {
			m.returnSuspects(suspects)
			m.refreshErrors.Inc()
			if l := m.log(); l != nil {
				l.Warn("could not rebuild the metrics gauges from storage: serving the counters, and the gauges as last rebuilt; the next scrape tries again", "error", err)
			}
		} else {
			m.applyGauges(g, suspects)
			m.gaugesAt, m.gaugesGen = now, gen
		}
	}
	setCounts(m.sharedTokens, m.sharedRoles, b.counts)
	setCounts(m.pending, m.pendingRoles, b.queued)
	families, err := m.registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("gathering metrics: %w", err)
	}
	var buf bytes.Buffer
	for _, mf := range families {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return nil, fmt.Errorf("encoding metrics: %w", err)
		}
	}
	return buf.Bytes(), nil
}

// setCounts sets gauge, per role of roles, to the count counts keep, once
// counted (a restarted node's first pass counts within a minute).
func setCounts(gauge *prometheus.GaugeVec, roles []string, counts interface{ get(string) (int64, bool) }) {
	for _, name := range roles {
		if n, ok := counts.get(name); ok {
			gauge.WithLabelValues(name).Set(float64(n))
		}
	}
}

// gaugeValues are the gauges as read from storage, set all at once (or not
// at all, when reading them failed).
type gaugeValues struct {
	renewBy      float64 // 0: not set
	roles        map[string]connect.GrantType
	sharedRoles  []string
	sharedExpiry map[string]float64
	pendingRoles map[string]bool // roles, the verify queue and deleted roles' queues
}

// readGauges reads the gauges from storage: renew_by from the config; per
// shared role, for role-wide tokens, their expiry; and per role (and for
// the verify token) the tokens queued for revocation. It costs one read per
// role-wide token and a list of the roles with a revocation queue; the
// counts of tokens stored and queued are kept in memory (token_counts.go).
func (m *metrics) readGauges(ctx context.Context, b *backend, s logical.Storage) (*gaugeValues, error) {
	g := &gaugeValues{
		roles:        map[string]connect.GrantType{},
		sharedExpiry: map[string]float64{},
		pendingRoles: map[string]bool{verifyRole: true},
	}
	snap, err := b.getSnapshot(ctx, s)
	if err != nil {
		return nil, err
	}
	if snap.config.configured() && !snap.config.RenewBy.IsZero() {
		g.renewBy = float64(snap.config.RenewBy.Unix())
	}
	names, err := s.List(ctx, roleStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	for _, name := range names {
		r, err := b.getRole(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if r == nil {
			continue
		}
		g.roles[name] = r.GrantType
		g.pendingRoles[name] = true
		if !r.shared() {
			continue
		}
		g.sharedRoles = append(g.sharedRoles, name)
		if r.GrantType == connect.GrantFulfillmentUserAssertion && r.UserID == "" {
			continue // per-user tokens: no one expiry stands for the role
		}
		key := tokenKey(name, r.UserID)
		t := b.tokens.get(key)
		if t == nil {
			if t, err = b.tokens.load(ctx, s, key); err != nil {
				return nil, err
			}
		}
		if snap.config.configured() && t.belongsTo(snap.config.CredentialsID, r.hash) {
			g.sharedExpiry[name] = float64(t.ExpiresAt.Unix())
		}
	}
	queues, err := s.List(ctx, revokingStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing revocation queues: %w", err)
	}
	for _, q := range queues {
		if name, ok := strings.CutSuffix(q, "/"); ok && revokingStoragePrefix+q != asideStoragePrefix {
			g.pendingRoles[name] = true
		}
	}
	return g, nil
}

// applyGauges sets the gauges to g. Every role's counters are resolved (at
// 0), so an alert sees a role's first rejection or error as an increase; the
// series of suspects (roles deleted, here or on another node) that storage
// no longer holds are forgotten.
func (m *metrics) applyGauges(g *gaugeValues, suspects map[string]struct{}) {
	m.renewBy.Reset()
	m.sharedTokens.Reset()
	m.sharedExpiry.Reset()
	m.pending.Reset()
	if g.renewBy != 0 {
		m.renewBy.WithLabelValues().Set(g.renewBy)
	}
	m.sharedRoles = g.sharedRoles
	for name, v := range g.sharedExpiry {
		m.sharedExpiry.WithLabelValues(name).Set(v)
	}
	m.pendingRoles = slices.Sorted(maps.Keys(g.pendingRoles))
	for name := range suspects {
		if _, ok := g.roles[name]; !ok {
			m.forgetRole(name)
		}
	}
	for name, grant := range g.roles {
		m.role(name)
		m.mintCounters(name, grant)
	}
}
