package instacart

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// mintTag labels the Connect call of a mint (connect.TokenRequest.Label),
// so the observer can count and log its attempts by role.
type mintTag struct {
	role    string
	grant   connect.GrantType
	perUser bool   // a token for one of many users: logged at debug level
	purpose string // for log lines; empty for creds reads
}

// mintLabel labels the Connect call of mint request req.
func mintLabel(req *mintRequest) *mintTag {
	return &mintTag{role: req.roleName, grant: req.role.GrantType, perUser: req.userID != "" && req.role.UserID == ""}
}

// verifyLabel labels the mint that verifies new credentials on a config write.
func verifyLabel() *mintTag {
	return &mintTag{role: verifyRole, grant: connect.GrantClientCredentials, purpose: "verify credentials"}
}

// revokeLabel labels a revocation's Connect call with the role whose token it is.
type revokeLabel struct{ role string }

// labels reads what the caller of a Connect call labelled it with.
func labels(a connect.Attempt) (tag *mintTag, roleName string) {
	switch l := a.Label.(type) {
	case *mintTag:
		return l, l.role
	case revokeLabel:
		return nil, l.role
	}
	return nil, ""
}

// Retrying is connect.Observer: an attempt is followed by another.
func (m *metrics) Retrying(ctx context.Context, a connect.Attempt) {
	m.observeDuration(a)
	status := "network"
	if a.Status != 0 {
		status = strconv.Itoa(a.Status)
	}
	m.retries.WithLabelValues(status).Inc()
	tag, roleName := labels(a)
	if a.Endpoint == connect.EndpointToken {
		outcome := outcomeTransient
		if a.Timeout {
			outcome = outcomeTimeout
		}
		m.countMint(tag, a.Grant, outcome)
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
		tag, _ := labels(a)
		outcome := classifyMint(err)
		m.countMint(tag, a.Grant, outcome)
		m.logMint(tag, a, outcome, err)
	case connect.EndpointRevoke:
		m.logRevocation(a, err)
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
// attempts and duration. A per-user token minted is counted, not logged:
// a plugin logs at trace level whatever Vault's level (Vault drops what it
// does not want), so each line costs both processes, once per shopper; a
// per-user failure goes to debug level.
func (m *metrics) logMint(tag *mintTag, a connect.Attempt, outcome mintOutcome, err error) {
	l := m.log()
	if l == nil || (tag != nil && tag.perUser && outcome == outcomeMinted) {
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
func (m *metrics) logRevocation(a connect.Attempt, err error) {
	l := m.log()
	if l == nil {
		return
	}
	tag, roleName := labels(a)
	outcome := revocationNames[revocationRevoked]
	if err != nil {
		outcome = revocationNames[revocationError]
		if ce, ok := connect.AsError(err); ok && !ce.Temporary() {
			outcome = revocationNames[revocationRefused]
		}
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
