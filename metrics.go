package instacart

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/version"
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
	metricPending          = "instacart_pending_revocations"
	metricBuildInfo        = "instacart_build_info"
	metricRefreshErrors    = "instacart_gauge_refresh_errors_total"
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
	revocationSetAside                                // a queued entry that cannot be decoded, set aside
	numRevocationOutcomes
)

var revocationNames = [numRevocationOutcomes]string{"revoked", "skipped_expired", "refused", "error", "set_aside"}

// verifyRole labels the token request a config write makes to verify new
// credentials, and the queue its revocation waits in: it is for no role, and
// no role can have this name (role names cannot contain '@').
const verifyRole = verifyQueue

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
	pending       *prometheus.GaugeVec
	refreshErrors prometheus.Counter

	// roles maps a role name to its pre-resolved series, copied on write so
	// a cached read finds its counter with one map lookup, no lock and no
	// allocation. rolesMu serialises resolving series against forgetting a
	// role's.
	roles   atomic.Pointer[map[string]*roleSeries]
	rolesMu sync.Mutex

	// mints maps (role, grant) to its outcome counters, resolved on first
	// use (a role deleted and created again may have another grant).
	mints sync.Map // mintKey -> *[numOutcomes]prometheus.Counter

	// scrapeMu serialises scrapes; gaugesAt is when the gauges were last
	// rebuilt from storage, and gaugesGen the value of gaugeGen then. A
	// config or role write bumps gaugeGen, so the next scrape rebuilds them.
	scrapeMu  sync.Mutex
	gaugesAt  time.Time
	gaugesGen uint64
	gaugeGen  atomic.Uint64
	// sharedRoles are the shared roles as last rebuilt, pendingRoles the
	// roles with a revocation queue: their counts are set at every scrape.
	sharedRoles, pendingRoles []string

	// suspects are roles written or deleted on another node (invalidated)
	// or deleted here: the next gauge refresh forgets the series of those
	// it does not find in storage.
	suspectsMu sync.Mutex
	suspects   map[string]struct{}

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
	m := &metrics{registry: prometheus.NewRegistry(), logger: logger, grantOf: grantOf, suspects: map[string]struct{}{}}
	m.tokenRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricTokenRequests,
		Help: "Token requests sent to Instacart Connect, one per attempt (retries included), by role, grant type and outcome (minted, rejected, transient_error, timeout). The role is " + verifyRole + " for the token that verifies new credentials on a config write.",
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
		Help: "Revocations of leased, flushed or discarded tokens, by outcome: revoked, skipped_expired (nothing to send), refused (for good), error (to be retried), set_aside (a queued entry that could not be decoded, moved to revoking/@aside/).",
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
	m.pending = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricPending,
		Help: "Tokens waiting in the revocation queue to be revoked at Connect, per role (0 for a role with none; a deleted role's while any remain). The role is " + verifyRole + " for tokens minted to verify credentials.",
	}, []string{"role"})
	m.refreshErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: metricRefreshErrors,
		Help: "Scrapes whose rebuild of the gauges from storage failed: they served the counters, and the gauges as last rebuilt.",
	})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricBuildInfo,
		Help: "Always 1: the version of the plugin serving this mount.",
	}, []string{"version"})
	buildInfo.WithLabelValues(version.Version()).Set(1)
	m.registry.MustRegister(m.tokenRequests, m.credsReads, durations, m.retries, revocations, m.sharedTokens, m.sharedExpiry, m.renewBy, m.pending, m.refreshErrors, buildInfo)
	empty := map[string]*roleSeries{}
	m.roles.Store(&empty)
	// The verify token's series are there from the start, at 0, so the
	// first rejection of new credentials is an increase an alert can see.
	m.mintCounters(verifyRole, connect.GrantClientCredentials)
	// Likewise the retries an on-call alert or dashboard watches for: a
	// series born at 1 hides its first retry from increase() and rate().
	for _, status := range []string{"429", "503", "network"} {
		m.retries.WithLabelValues(status)
	}
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
	m.rolesMu.Lock() // not while forgetRole drops the role's series
	defer m.rolesMu.Unlock()
	c := new([numOutcomes]prometheus.Counter)
	for i := range c {
		c[i] = m.tokenRequests.WithLabelValues(roleName, string(grant), outcomeNames[i])
	}
	actual, _ := m.mints.LoadOrStore(key, c)
	return actual.(*[numOutcomes]prometheus.Counter)
}

// forgetRole drops every series of a deleted role: its reads, its token
// requests and its shared-token gauges. Its pending revocations stay while
// any are queued (the gauge refresh counts them from storage). A role created
// again under the name starts from 0.
func (m *metrics) forgetRole(name string) {
	if m == nil || name == verifyRole {
		return
	}
	m.rolesMu.Lock()
	defer m.rolesMu.Unlock()
	cur := *m.roles.Load()
	if _, ok := cur[name]; ok {
		next := make(map[string]*roleSeries, len(cur))
		for k, v := range cur {
			if k != name {
				next[k] = v
			}
		}
		m.roles.Store(&next)
	}
	m.mints.Range(func(k, _ any) bool {
		if k.(mintKey).role == name {
			m.mints.Delete(k)
		}
		return true
	})
	only := prometheus.Labels{"role": name}
	m.credsReads.DeletePartialMatch(only)
	m.tokenRequests.DeletePartialMatch(only)
	m.sharedTokens.DeletePartialMatch(only)
	m.sharedExpiry.DeletePartialMatch(only)
}

// invalidateGauges makes the next scrape rebuild the gauges from storage:
// after a config or role write, so it shows the change.
func (m *metrics) invalidateGauges() {
	if m == nil {
		return
	}
	m.gaugeGen.Add(1)
}

// roleChanged notes a role written or deleted on another node: the next
// scrape rebuilds the gauges, and forgets the role's series if it is gone.
func (m *metrics) roleChanged(name string) {
	if m == nil {
		return
	}
	m.suspectsMu.Lock()
	m.suspects[name] = struct{}{}
	m.suspectsMu.Unlock()
	m.invalidateGauges()
}

// roleDeleted drops a role deleted here from the metrics at once. It is also
// noted as a suspect, so a gauge refresh that listed the role just before it
// was deleted cannot leave its series behind.
func (m *metrics) roleDeleted(name string) {
	m.forgetRole(name)
	m.roleChanged(name)
}

// takeSuspects hands the suspects to a gauge refresh; returnSuspects gives
// them back when it fails.
func (m *metrics) takeSuspects() map[string]struct{} {
	m.suspectsMu.Lock()
	defer m.suspectsMu.Unlock()
	out := m.suspects
	m.suspects = map[string]struct{}{}
	return out
}

func (m *metrics) returnSuspects(names map[string]struct{}) {
	m.suspectsMu.Lock()
	defer m.suspectsMu.Unlock()
	for n := range names {
		m.suspects[n] = struct{}{}
	}
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
		if name == verifyRole {
			return connect.GrantClientCredentials
		}
		if r, ok := b.roles.Load(name); ok {
			return r.(*role).GrantType
		}
		return ""
	})
}
