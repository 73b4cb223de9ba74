package instacart

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/common/expfmt"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// gaugeRefreshInterval bounds how often a scrape rebuilds the gauges from
// storage: counting a role's per-user tokens lists them all, and anyone who
// may read metrics could otherwise make every scrape do it.
const gaugeRefreshInterval = time.Minute

// scrape renders the registry in Prometheus' text format, after rebuilding
// the gauges from what storage holds (at most once per gaugeRefreshInterval).
func (m *metrics) scrape(ctx context.Context, b *backend, s logical.Storage) ([]byte, error) {
	m.scrapeMu.Lock()
	defer m.scrapeMu.Unlock()
	if now := b.now(); m.gaugesAt.IsZero() || now.Sub(m.gaugesAt) >= gaugeRefreshInterval {
		if err := m.refreshGauges(ctx, b, s); err != nil {
			return nil, err
		}
		m.gaugesAt = now
	}
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

// refreshGauges sets the gauges from storage: renew_by from the config, and
// per shared role the tokens held and, for role-wide tokens, their expiry.
// It costs one list per shared role and one read per role-wide token.
func (m *metrics) refreshGauges(ctx context.Context, b *backend, s logical.Storage) error {
	m.renewBy.Reset()
	m.sharedTokens.Reset()
	m.sharedExpiry.Reset()

	e, err := b.getSnapshot(ctx, s)
	if err != nil {
		return err
	}
	if e.config.configured() && !e.config.RenewBy.IsZero() {
		m.renewBy.WithLabelValues().Set(float64(e.config.RenewBy.Unix()))
	}
	names, err := s.List(ctx, roleStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing roles: %w", err)
	}
	for _, name := range names {
		r, err := b.getRole(ctx, s, name)
		if err != nil {
			return err
		}
		if r == nil || !r.shared() {
			continue
		}
		keys, err := b.tokens.roleKeys(ctx, s, name)
		if err != nil {
			return err
		}
		m.sharedTokens.WithLabelValues(name).Set(float64(len(keys)))
		if r.GrantType == connect.GrantFulfillmentUserAssertion && r.UserID == "" {
			continue // per-user tokens: no one expiry stands for the role
		}
		key := tokenKey(name, r.UserID)
		t := b.tokens.get(key)
		if t == nil {
			if t, err = b.tokens.load(ctx, s, key); err != nil {
				return err
			}
		}
		if e.config.configured() && t.belongsTo(e.config.CredentialsID, r.hash) {
			m.sharedExpiry.WithLabelValues(name).Set(float64(t.ExpiresAt.Unix()))
		}
	}
	return nil
}
