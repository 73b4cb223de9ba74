package instacart

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// Metric names and labels are part of the engine's contract (README,
// "Metrics"): dashboards and alerts depend on them.
const (
	metricTokenRequests    = "instacart_token_requests_total"
	metricCredsReads       = "instacart_creds_reads_total"
	metricUpstreamDuration = "instacart_upstream_request_duration_seconds"
	metricUpstreamRetries  = "instacart_upstream_retries_total"
	metricRevocations      = "instacart_revocations_total"
	metricSharedTokens     = "instacart_shared_tokens"
	metricSharedExpiry     = "instacart_shared_token_expiry_timestamp_seconds"
	metricRenewBy          = "instacart_credentials_renew_by_timestamp_seconds"
)

// readSource is where a creds read's token came from.
type readSource int

const (
	sourceMemory         readSource = iota // the shared token held in memory
	sourceStorage                          // the shared token in storage (after a restart, or another node's)
	sourceMinted                           // a token minted for this read (or for concurrent readers of it)
	sourceStaleWhileDown                   // a cached token past its refresh point, because Connect failed
	numSources
)

var sourceNames = [numSources]string{"memory", "storage", "minted", "stale_while_down"}

// mintOutcome is what one token request attempt got.
type mintOutcome int

const (
	outcomeMinted    mintOutcome = iota // a usable token
	outcomeRejected                     // a refusal that retrying cannot fix (4xx)
	outcomeTransient                    // 408/429/5xx, a network error or an unusable 200
	outcomeTimeout                      // no answer in time
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"minted", "rejected", "transient_error", "timeout"}

// revocationOutcome is how one revocation by revokeUpstream ended.
type revocationOutcome int

const (
	revocationRevoked        revocationOutcome = iota // Connect revoked it (or did not know it)
	revocationSkippedExpired                          // expired already: nothing sent
	revocationRefused                                 // Connect refused for good
	revocationError                                   // not revoked for now (Connect failing, or no credentials)
	numRevocationOutcomes
)

var revocationNames = [numRevocationOutcomes]string{"revoked", "skipped_expired", "refused", "error"}

// verifyRole labels the token request a config write makes to verify new
// credentials: it is for no role.
const verifyRole = ""

// stormQuiet is how long Connect must go without a retry before the next
// retry counts as a new storm (and is warned about again).
const stormQuiet = time.Minute

// metrics is one backend instance's registry and series. Nothing is global:
// mounts served by one multiplexed plugin process keep their own figures.
// It also implements connect.Observer, for every client the backend builds.
type metrics struct {
	registry *prometheus.Registry
	logger   func() hclog.Logger
	// grantOf names the grant of a role held in memory, for revocation log lines.
	grantOf func(roleName string) connect.GrantType

	tokenRequests *prometheus.CounterVec
	credsReads    *prometheus.CounterVec
	retries       *prometheus.CounterVec
	durations     [2]prometheus.Observer // token, revoke
	revocations   [numRevocationOutcomes]prometheus.Counter
	sharedTokens  *prometheus.GaugeVec
	sharedExpiry  *prometheus.GaugeVec
	renewBy       *prometheus.GaugeVec

	// roles maps a role name to its pre-resolved series, copied on write so
	// a cached read finds its counter with one map lookup, no lock and no
	// allocation.
	roles   atomic.Pointer[map[string]*roleSeries]
	rolesMu sync.Mutex

	// mints maps (role, grant) to its outcome counters, resolved on first
	// use (a role deleted and created again may have another grant).
	mints sync.Map // mintKey -> *[numOutcomes]prometheus.Counter

	// scrapeMu serialises scrapes; gaugesAt is when the gauges were last
	// rebuilt from storage.
	scrapeMu sync.Mutex
	gaugesAt time.Time

	storm retryStorm
}

// roleSeries are a role's read counters, resolved once.
type roleSeries struct {
	reads [numSources]prometheus.Counter
}

type mintKey struct {
	role  string
	grant connect.GrantType
}

func newMetrics(logger func() hclog.Logger, grantOf func(string) connect.GrantType) *metrics {
	m := &metrics{registry: prometheus.NewRegistry(), logger: logger, grantOf: grantOf}
	m.tokenRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricTokenRequests,
		Help: "Token requests sent to Instacart Connect, one per attempt (retries included), by role, grant type and outcome (minted, rejected, transient_error, timeout). The role is empty for the token that verifies new credentials on a config write.",
	}, []string{"role", "grant_type", "outcome"})
	m.credsReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricCredsReads,
		Help: "Successful reads of creds/<role>, by where the token came from: memory, storage, minted (for this read or concurrent readers sharing one mint), or stale_while_down (a cached token served because Connect failed). Per-user tokens count under their role.",
	}, []string{"role", "source"})
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    metricUpstreamDuration,
		Help:    "Duration of each HTTP request (attempt) to Instacart Connect, by endpoint (token, revoke).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"endpoint"})
	m.durations[0] = durations.WithLabelValues(string(connect.EndpointToken))
	m.durations[1] = durations.WithLabelValues(string(connect.EndpointRevoke))
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricUpstreamRetries,
		Help: `Requests to Instacart Connect retried, by the HTTP status that caused the retry ("network" when no answer arrived).`,
	}, []string{"status"})
	revocations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricRevocations,
		Help: "Revocations of leased, flushed or discarded tokens, by outcome: revoked, skipped_expired (nothing to send), refused (for good), error (to be retried).",
	}, []string{"outcome"})
	for i := range m.revocations {
		m.revocations[i] = revocations.WithLabelValues(revocationNames[i])
	}
	m.sharedTokens = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricSharedTokens,
		Help: "Shared tokens held in storage per shared role (role-wide, or one per user), expired ones included until tidy removes them.",
	}, []string{"role"})
	m.sharedExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricSharedExpiry,
		Help: "When the role-wide shared token held for a role expires (Unix seconds). Not reported for roles with per-user tokens.",
	}, []string{"role"})
	m.renewBy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricRenewBy,
		Help: "The renew_by date written to config (Unix seconds): when Instacart wants the application credentials rotated. Absent when renew_by is not set.",
	}, nil)
	m.registry.MustRegister(m.tokenRequests, m.credsReads, durations, m.retries, revocations, m.sharedTokens, m.sharedExpiry, m.renewBy)
	empty := map[string]*roleSeries{}
	m.roles.Store(&empty)
	return m
}

// role returns name's series, resolving them on first use.
func (m *metrics) role(name string) *roleSeries {
	if rs, ok := (*m.roles.Load())[name]; ok {
		return rs
	}
	m.rolesMu.Lock()
	defer m.rolesMu.Unlock()
	cur := *m.roles.Load()
	if rs, ok := cur[name]; ok {
		return rs
	}
	rs := &roleSeries{}
	for i := range rs.reads {
		rs.reads[i] = m.credsReads.WithLabelValues(name, sourceNames[i])
	}
	next := make(map[string]*roleSeries, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[name] = rs
	m.roles.Store(&next)
	return rs
}

// read counts a successful creds read. It is on the cached read path: one
// map lookup and an atomic add.
func (m *metrics) read(roleName string, src readSource) {
	if m == nil {
		return
	}
	m.role(roleName).reads[src].Inc()
}

// mintCounters returns the outcome counters of (role, grant).
func (m *metrics) mintCounters(roleName string, grant connect.GrantType) *[numOutcomes]prometheus.Counter {
	key := mintKey{roleName, grant}
	if c, ok := m.mints.Load(key); ok {
		return c.(*[numOutcomes]prometheus.Counter)
	}
	c := new([numOutcomes]prometheus.Counter)
	for i := range c {
		c[i] = m.tokenRequests.WithLabelValues(roleName, string(grant), outcomeNames[i])
	}
	actual, _ := m.mints.LoadOrStore(key, c)
	return actual.(*[numOutcomes]prometheus.Counter)
}

// revocation counts how a revocation by revokeUpstream ended.
func (m *metrics) revocation(outcome revocationOutcome) {
	if m == nil {
		return
	}
	m.revocations[outcome].Inc()
}

// revocationDone is deferred by revokeUpstream with pointers to its results.
func (m *metrics) revocationDone(permanent *bool, err *error) {
	switch {
	case *err == nil:
		m.revocation(revocationRevoked)
	case *permanent && !errors.Is(*err, errCredentialsGone):
		m.revocation(revocationRefused)
	default:
		m.revocation(revocationError)
	}
}

// newBackendMetrics builds b's metrics, logging through b's logger and
// naming grants from the roles b holds in memory.
func newBackendMetrics(b *backend) *metrics {
	return newMetrics(func() hclog.Logger { return b.Logger() }, func(name string) connect.GrantType {
		if r, ok := b.roles.Load(name); ok {
			return r.(*role).GrantType
		}
		return ""
	})
}
