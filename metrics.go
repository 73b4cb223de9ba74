package instacart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

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

// mintTag travels in the context of a mint, so the Connect observer can
// label its attempts and the read path learn what the mint did.
type mintTag struct {
	role    string
	grant   connect.GrantType
	perUser bool   // a token for one of many users: logged at debug level
	purpose string // for log lines; empty for creds reads

	minted atomic.Bool // Connect answered with a usable token
	failed atomic.Bool // a token request was sent and failed
}

type mintTagKey struct{}

// mintContext tags ctx for a mint for role r (userID: the user of a per-user token).
func (m *metrics) mintContext(ctx context.Context, roleName string, r *role, userID string) (context.Context, *mintTag) {
	tag := &mintTag{role: roleName, grant: r.GrantType, perUser: userID != "" && r.UserID == ""}
	return context.WithValue(ctx, mintTagKey{}, tag), tag
}

// verifyContext tags the mint that verifies new credentials on a config write.
func (m *metrics) verifyContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, mintTagKey{}, &mintTag{role: verifyRole, grant: connect.GrantClientCredentials, purpose: "verify credentials"})
}

func mintTagFrom(ctx context.Context) *mintTag {
	tag, _ := ctx.Value(mintTagKey{}).(*mintTag)
	return tag
}

// source is where the token of a shared read came from, judged once the
// refresh returned a token: a mint, a cached token served because the mint
// failed, or storage.
func (t *mintTag) source() readSource {
	switch {
	case t.minted.Load():
		return sourceMinted
	case t.failed.Load():
		return sourceStaleWhileDown
	default:
		return sourceStorage
	}
}

// revokeRoleKey carries the role of a token being revoked, for the log line.
type revokeRoleKey struct{}

// withRevokeRole names the role whose token ctx revokes.
func withRevokeRole(ctx context.Context, roleName string) context.Context {
	return context.WithValue(ctx, revokeRoleKey{}, roleName)
}

// Retrying is connect.Observer: an attempt is followed by another.
func (m *metrics) Retrying(ctx context.Context, a connect.Attempt) {
	m.observeDuration(a)
	status := "network"
	if a.Status != 0 {
		status = strconv.Itoa(a.Status)
	}
	m.retries.WithLabelValues(status).Inc()
	tag := mintTagFrom(ctx)
	if a.Endpoint == connect.EndpointToken {
		outcome := outcomeTransient
		if a.Timeout {
			outcome = outcomeTimeout
		}
		m.countMint(tag, a.Grant, outcome)
	}
	roleName, _ := ctx.Value(revokeRoleKey{}).(string)
	if tag != nil && roleName == "" {
		roleName = tag.role
	}
	m.storm.retry(m.log(), a, status, roleName)
}

// Finished is connect.Observer: the last attempt of a call.
func (m *metrics) Finished(ctx context.Context, a connect.Attempt, err error) {
	m.observeDuration(a)
	if err == nil {
		m.storm.healthy(m.log(), a)
	}
	switch a.Endpoint {
	case connect.EndpointToken:
		tag := mintTagFrom(ctx)
		outcome := classifyMint(err)
		m.countMint(tag, a.Grant, outcome)
		if tag != nil {
			if err == nil {
				tag.minted.Store(true)
			} else {
				tag.failed.Store(true)
			}
		}
		m.logMint(tag, a, outcome, err)
	case connect.EndpointRevoke:
		m.logRevocation(ctx, a, err)
	}
}

func (m *metrics) observeDuration(a connect.Attempt) {
	i := 0
	if a.Endpoint == connect.EndpointRevoke {
		i = 1
	}
	m.durations[i].Observe(a.Duration.Seconds())
}

func (m *metrics) countMint(tag *mintTag, grant connect.GrantType, outcome mintOutcome) {
	roleName := verifyRole
	if tag != nil {
		roleName = tag.role
	}
	m.mintCounters(roleName, grant)[outcome].Inc()
}

// classifyMint names the outcome of a token call's last attempt.
func classifyMint(err error) mintOutcome {
	if err == nil {
		return outcomeMinted
	}
	ce, ok := connect.AsError(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded) || ok && ce.Timeout():
		return outcomeTimeout
	case ok && ce.Temporary():
		return outcomeTransient
	case ok:
		return outcomeRejected
	}
	return outcomeTransient
}

// outcomeLogFields are a failed call's status and OAuth error code: never
// Connect's description, which could echo what was sent.
func outcomeLogFields(err error) []any {
	ce, ok := connect.AsError(err)
	if !ok || err == nil {
		return nil
	}
	fields := []any{"status", ce.StatusCode}
	if ce.Code != "" {
		fields = append(fields, "error_code", ce.Code)
	}
	return fields
}

// logMint writes the one line per token call: role, grant, outcome,
// attempts and duration. Mints of per-user tokens go to debug level.
func (m *metrics) logMint(tag *mintTag, a connect.Attempt, outcome mintOutcome, err error) {
	l := m.log()
	if l == nil {
		return
	}
	roleName, purpose, perUser := verifyRole, "", false
	if tag != nil {
		roleName, purpose, perUser = tag.role, tag.purpose, tag.perUser
	}
	fields := []any{"role", roleName, "grant", string(a.Grant), "outcome", outcomeNames[outcome], "attempts", a.Number, "duration", logDuration(a.Elapsed)}
	if purpose != "" {
		fields = append(fields, "purpose", purpose)
	}
	if perUser {
		fields = append(fields, "per_user", true)
	}
	fields = append(fields, outcomeLogFields(err)...)
	msg := "token request"
	if perUser {
		l.Debug(msg, fields...)
	} else {
		l.Info(msg, fields...)
	}
}

// logRevocation writes the one line per revocation sent to Connect.
func (m *metrics) logRevocation(ctx context.Context, a connect.Attempt, err error) {
	l := m.log()
	if l == nil {
		return
	}
	roleName, _ := ctx.Value(revokeRoleKey{}).(string)
	outcome := revocationNames[revocationRevoked]
	if err != nil {
		outcome = revocationNames[revocationError]
		if ce, ok := connect.AsError(err); ok && !ce.Temporary() {
			outcome = revocationNames[revocationRefused]
		}
	}
	tag := mintTagFrom(ctx) // a token revoked as it arrives: unusable, or not handed out
	if tag != nil && roleName == "" {
		roleName = tag.role
	}
	var grant connect.GrantType
	switch {
	case tag != nil:
		grant = tag.grant
	case m.grantOf != nil:
		grant = m.grantOf(roleName)
	}
	fields := []any{"role", roleName, "grant", string(grant), "outcome", outcome, "attempts", a.Number, "duration", logDuration(a.Elapsed)}
	if tag != nil && tag.purpose != "" {
		fields = append(fields, "purpose", tag.purpose)
	}
	fields = append(fields, outcomeLogFields(err)...)
	l.Info("token revocation", fields...)
}

// logDuration is a duration as log lines show it, in milliseconds
// ("223.476ms"): a plugin's log lines reach Vault as JSON, where a
// time.Duration would become nanoseconds.
func logDuration(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64) + "ms"
}

func (m *metrics) log() hclog.Logger {
	if m.logger == nil {
		return nil
	}
	return m.logger()
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

// retryStorm warns once when Connect starts needing retries, and says when
// it stopped: not once per attempt.
type retryStorm struct {
	now         func() time.Time // nil: time.Now
	mu          sync.Mutex
	active      bool
	start, last time.Time
	retries     int
}

func (s *retryStorm) retry(l hclog.Logger, a connect.Attempt, status, roleName string) {
	now := s.clock()
	s.mu.Lock()
	var endedRetries int
	var endedSpan time.Duration
	if s.active && now.Sub(s.last) > stormQuiet {
		endedRetries, endedSpan = s.retries, s.last.Sub(s.start)
		s.active = false
	}
	starting := !s.active
	if starting {
		s.active, s.start, s.retries = true, now, 0
	}
	s.retries++
	s.last = now
	s.mu.Unlock()
	if l == nil {
		return
	}
	if endedRetries > 0 {
		l.Info("Connect retry storm over", "retries", endedRetries, "lasted", logDuration(endedSpan))
	}
	if starting {
		fields := []any{"endpoint", string(a.Endpoint), "status", status, "attempt", a.Number, "role", roleName}
		if a.Grant != "" {
			fields = append(fields, "grant", string(a.Grant))
		}
		l.Warn("Connect is failing, retrying: warned once per storm, retries are counted in "+metricUpstreamRetries, fields...)
	}
}

func (s *retryStorm) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// healthy notes a call that succeeded: at its first attempt, a quiet minute
// after the last retry, it ends the storm.
func (s *retryStorm) healthy(l hclog.Logger, a connect.Attempt) {
	if a.Number != 1 {
		return
	}
	now := s.clock()
	s.mu.Lock()
	if !s.active || now.Sub(s.last) <= stormQuiet {
		s.mu.Unlock()
		return
	}
	retries, span := s.retries, s.last.Sub(s.start)
	s.active = false
	s.mu.Unlock()
	if l != nil {
		l.Info("Connect retry storm over", "retries", retries, "lasted", logDuration(span))
	}
}

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
