//go:build explore

package instacart

// The schedule explorer's invariants I1–I9 and the bookkeeping they need
// (explore_test.go has the overview). Each check says in its failure message
// which invariant broke, what happened and which operation did it; tokens
// are named by their order of issue and a short hash, never in full, and
// secrets never appear.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

type failure struct {
	inv   string // "I1" … "I9", "LEAK", "LIVENESS"
	class string // what kind of failure of inv, for the summary
	msg   string
	step  int
	// soft: a failure of what an answer says (I5, I7, LEAK[echo]), which
	// leaves the world's state as it was: the seed goes on.
	soft bool
}

// softFailure reports whether a failure of name is one of an answer's words
// or status only.
func softFailure(name string) bool {
	return strings.HasPrefix(name, "I5[") || strings.HasPrefix(name, "I7[") || name == "LEAK[echo]"
}

func (f failure) key() string {
	if f.class == "" {
		return f.inv
	}
	return f.inv + " [" + f.class + "]"
}

// wireCall is one call the transport saw.
type wireCall struct {
	seq      int
	gen      int    // the generation (process) that made it
	op       *opRun // nil: background work
	host     string
	endpoint string // "token" or "revoke"
	p        wireParams
	fault    faultKind
	sent     bool // a connection was made (GotConn)
	handled  bool // Connect (the fake) processed it
	token    string
	// sentAt is the fake time the attempt began (when the engine starts
	// counting a token's life), handledAt when Connect processed it.
	sentAt, handledAt time.Time
}

// removal is how a token left tokens/ storage.
type removal struct {
	kind string // "overwritten", "deleted"
	op   *opRun // nil: background work (tidy, a role's clean-up)
	by   *tokenRec
}

// tokenRec is everything the explorer knows of one token Connect minted.
type tokenRec struct {
	ord      int
	tok      string
	call     *wireCall
	lost     bool // the answer never reached the engine (timeout after handling)
	garbage  bool // delivered in a 200 the client cannot parse
	stored   bool
	leases   int
	story    []string
	removals []removal
	// callerLeft: the answer was lost because the request the call was made
	// on had been cancelled (its caller left while Connect minted it);
	// unlike a loss in transit, the engine chose that context.
	callerLeft bool
	// irrevocable: Vault gave up revoking a lease of it.
	irrevocable bool
}

func (r *tokenRec) name() string { return fmt.Sprintf("#%d(%s)", r.ord, shortHash(r.tok)) }

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:3])
}

func shortTok(tok string) string { return "tok:" + shortHash(tok) }

// secretRef is where a secret was written to config for.
type secretRef struct {
	host, clientID string
	order          int
}

// mark records which operation took a token out of service, and when.
type mark struct {
	step, tick int
	by         *opRun
	gen        int
}

type invariants struct {
	w *world

	mu          sync.Mutex // guards the fields below up to the blank line
	calls       []*wireCall
	tokens      map[string]*tokenRec
	order       []*tokenRec
	codeHandled map[string]*wireCall
	codeLost    map[string]*wireCall
	codeNames   map[string]string // alias -> "C1"
	realOf      map[string]string // alias -> the fake's token or code
	aliasOf     map[string]string // the fake's token -> alias
	secretFor   map[string]secretRef
	failures    []failure
	lostFaults  int
	// unsavedLost counts tokens lost with their process (lostWithProcess).
	unsavedLost int
	// staleOverwrites counts stores of a shared token minted with older
	// credentials over one minted with newer credentials (for the summary).
	staleOverwrites int
	// i6bPasses counts periodic passes with a host down; i6bJudged those
	// with pending revocations at the other host that I6(b) could judge.
	i6bPasses, i6bJudged int
	// events orders Connect's handling of calls against operations'
	// answers (I9); revokedAt is when Connect revoked a token.
	events    int
	revokedAt map[string]int
	// I8's bookkeeping: the tick of the last write to the queue the current
	// generation's counts cannot have seen (another generation's, a write
	// that landed though storage said it failed, a pre-fill), and the start
	// tick of its last periodic pass that ended well after it.
	foreignTick int
	recountGen  int
	recountTick int
	i8Judged    int

	// Scheduler goroutine only.
	handed  map[string]map[string]bool // role -> tokens its shared reads handed out
	flushed map[string]mark            // token -> first flush that took it out of service
	retire  map[string]mark            // token -> first role edit/delete or config change retiring it
}

func newInvariants(w *world) *invariants {
	return &invariants{
		w: w, tokens: map[string]*tokenRec{}, codeHandled: map[string]*wireCall{}, codeLost: map[string]*wireCall{},
		codeNames: map[string]string{}, realOf: map[string]string{}, aliasOf: map[string]string{}, secretFor: map[string]secretRef{},
		handed: map[string]map[string]bool{}, flushed: map[string]mark{}, retire: map[string]mark{}, revokedAt: map[string]int{},
		foreignTick: -1,
	}
}

// failLocked records a failure; name is the invariant and a class in
// brackets ("I2[…]"), which the summary groups by.
func (inv *invariants) failLocked(name, format string, args ...any) {
	f := failure{inv: name, msg: fmt.Sprintf(format, args...), step: int(inv.w.stepNow.Load()), soft: softFailure(name)}
	if i := strings.IndexByte(name, '['); i > 0 {
		f.inv, f.class = name[:i], strings.TrimSuffix(name[i+1:], "]")
	}
	inv.failures = append(inv.failures, f)
}

func (inv *invariants) fail(name, format string, args ...any) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.failLocked(name, format, args...)
}

// hasFailures reports whether a failure that stops the seed was recorded.
func (inv *invariants) hasFailures() bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for _, f := range inv.failures {
		if !f.soft {
			return true
		}
	}
	return false
}

func (inv *invariants) takeFailures() []failure {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	f := inv.failures
	inv.failures = nil
	return f
}

func opName(o *opRun) string {
	if o == nil {
		return "background work"
	}
	return o.name + " (" + o.desc + ")"
}

// newCode gives the fake's code an alias for the engine, and a name.
func (inv *invariants) newCode(real string) (alias, name string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	n := len(inv.codeNames) + 1
	alias = fmt.Sprintf("xcode%027d", n)
	name = "C" + itoa(n)
	inv.codeNames[alias] = name
	inv.realOf[alias] = real
	return alias, name
}

// aliasToken names a token the fake minted as the engine will see it: a
// deterministic string of a token's shape.
func (inv *invariants) aliasToken(real string) string {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if a, ok := inv.aliasOf[real]; ok {
		return a
	}
	a := fmt.Sprintf("xtok%039d", len(inv.aliasOf)+1)
	inv.aliasOf[real] = a
	inv.realOf[a] = real
	return a
}

// unalias puts the fake's own token or code back into a request body.
func (inv *invariants) unalias(body []byte) []byte {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return body
	}
	inv.mu.Lock()
	changed := false
	for _, k := range []string{"code", "token"} {
		if v, _ := m[k].(string); v != "" {
			if real, ok := inv.realOf[v]; ok {
				m[k] = real
				changed = true
			}
		}
	}
	inv.mu.Unlock()
	if !changed {
		return body
	}
	b, _ := json.Marshal(m)
	return b
}

func (inv *invariants) writeSecret(secret, host, clientID string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.secretFor[secret] = secretRef{host: host, clientID: clientID, order: len(inv.secretFor) + 1}
}

// ---------------------------------------------------------------- the wire

// beginCall records a call as the transport takes it. I4: a client secret
// only ever goes to the host and client id it was written to config with.
func (inv *invariants) beginCall(o *opRun, host, endpoint string, p wireParams, fault faultKind, sentAt time.Time) *wireCall {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	c := &wireCall{seq: len(inv.calls) + 1, op: o, host: host, endpoint: endpoint, p: p, fault: fault, sentAt: sentAt}
	inv.calls = append(inv.calls, c)
	if p.ClientSecret != "" {
		ref, ok := inv.secretFor[p.ClientSecret]
		switch {
		case !ok:
			inv.failLocked("I4[secret]", "a client secret never written to config was sent to host %s (POST %s by %s)", host, endpoint, opName(o))
		case ref.host != host || ref.clientID != p.ClientID:
			inv.failLocked("I4[secret]", "the client secret written for client %q at host %s was sent to host %s as client %q (POST %s by %s)",
				ref.clientID, ref.host, host, p.ClientID, endpoint, opName(o))
		}
	}
	return c
}

// sent: the call went out. I2 (codes): a code whose answer was lost is never
// sent again.
func (inv *invariants) sent(c *wireCall) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	c.sent = true
	if c.endpoint == "token" && c.p.Code != "" {
		if prev := inv.codeLost[c.p.Code]; prev != nil {
			inv.failLocked("I2[code sent again after a lost answer]", "authorization code %s was sent again by %s after Connect handled it for %s and the answer was lost",
				inv.codeNameLocked(c.p.Code), opName(c.op), opName(prev.op))
		}
	}
}

func (inv *invariants) codeNameLocked(code string) string {
	if n, ok := inv.codeNames[code]; ok {
		return n
	}
	return "(a code the explorer did not issue)"
}

// handled: Connect processed the call. I3: no code is processed twice. A
// token it minted is registered; if the fault was a timeout after handling,
// it never reached the engine.
func (inv *invariants) handled(c *wireCall, status int, tok string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	c.handled = true
	c.handledAt = inv.w.clock.now()
	inv.events++
	if c.endpoint == "revoke" && status == http.StatusOK && c.p.Token != "" {
		if _, ok := inv.revokedAt[c.p.Token]; !ok {
			inv.revokedAt[c.p.Token] = inv.events
		}
		if rec := inv.tokens[c.p.Token]; rec != nil {
			rec.story = append(rec.story, fmt.Sprintf("revoked at Connect (host %s) for %s", c.host, opName(c.op)))
		}
	}
	if c.endpoint == "token" && c.p.Code != "" {
		if prev := inv.codeHandled[c.p.Code]; prev != nil {
			inv.failLocked("I3[code twice]", "authorization code %s reached Connect twice: first for %s (call %d, %s), again for %s (call %d)",
				inv.codeNameLocked(c.p.Code), opName(prev.op), prev.seq, prev.fault, opName(c.op), c.seq)
		} else {
			inv.codeHandled[c.p.Code] = c
		}
		if c.fault == faultTimeoutAfterHandling {
			inv.codeLost[c.p.Code] = c
		}
	}
	if tok == "" {
		return
	}
	c.token = tok
	rec := &tokenRec{ord: len(inv.order) + 1, tok: tok, call: c}
	inv.tokens[tok] = rec
	inv.order = append(inv.order, rec)
	switch c.fault {
	case faultTimeoutAfterHandling:
		rec.lost = true
		inv.lostFaults++
		rec.story = append(rec.story, fmt.Sprintf("minted at %s for %s; the answer was lost (timeout after handling)", c.host, opName(c.op)))
	case faultGarbage200:
		rec.garbage = true
		rec.story = append(rec.story, fmt.Sprintf("minted at %s for %s; delivered in an unparseable 200", c.host, opName(c.op)))
	default:
		rec.story = append(rec.story, fmt.Sprintf("minted at %s for %s", c.host, opName(c.op)))
	}
}

// ---------------------------------------------------------------- storage

func (inv *invariants) observePutLocked(o *opRun, gen int, key string, prev *logical.StorageEntry, value []byte, landed bool) {
	inv.noteQueueWriteLocked(gen, key, landed)
	switch {
	case tokenRole(key) != "":
		var t issuedToken
		if json.Unmarshal(value, &t) != nil {
			return
		}
		rec := inv.tokens[t.AccessToken]
		if rec != nil {
			rec.stored = true
			rec.story = append(rec.story, fmt.Sprintf("stored at %s by %s", key, opName(o)))
		}
		if prev != nil {
			var p issuedToken
			if json.Unmarshal(prev.Value, &p) == nil && p.AccessToken != t.AccessToken {
				if pr := inv.tokens[p.AccessToken]; pr != nil {
					if rec != nil && inv.secretFor[rec.call.p.ClientSecret].order < inv.secretFor[pr.call.p.ClientSecret].order {
						inv.staleOverwrites++ // not a failure by itself: I2 judges what becomes of pr
					}
					by := "an unknown token"
					if rec != nil {
						by = rec.name()
					}
					pr.story = append(pr.story, fmt.Sprintf("overwritten at %s by %s (%s)", key, by, opName(o)))
					pr.removals = append(pr.removals, removal{kind: "overwritten", op: o, by: rec})
				}
			}
		}
	case strings.HasPrefix(key, revokingStoragePrefix):
		var p pendingRevocation
		if json.Unmarshal(value, &p) == nil {
			if rec := inv.tokens[p.AccessToken]; rec != nil {
				rec.story = append(rec.story, "queued for revocation by "+opName(o))
			}
			if o != nil {
				o.queued = append(o.queued, p.AccessToken)
			}
		}
	case strings.HasPrefix(key, "wal/"):
		var e struct {
			Data struct {
				AccessToken string `json:"access_token"`
			} `json:"data"`
		}
		if json.Unmarshal(value, &e) == nil && e.Data.AccessToken != "" {
			if rec := inv.tokens[e.Data.AccessToken]; rec != nil {
				rec.story = append(rec.story, "written to the WAL by "+opName(o))
			}
		}
	}
}

func (inv *invariants) observeDeleteLocked(o *opRun, gen int, key string, prev *logical.StorageEntry, landed bool) {
	inv.noteQueueWriteLocked(gen, key, landed)
	if prev == nil {
		return
	}
	switch {
	case tokenRole(key) != "":
		var t issuedToken
		if json.Unmarshal(prev.Value, &t) == nil {
			if rec := inv.tokens[t.AccessToken]; rec != nil {
				rec.story = append(rec.story, fmt.Sprintf("removed from %s by %s", key, opName(o)))
				rec.removals = append(rec.removals, removal{kind: "deleted", op: o})
			}
		}
	case strings.HasPrefix(key, revokingStoragePrefix):
		var p pendingRevocation
		if json.Unmarshal(prev.Value, &p) == nil {
			if rec := inv.tokens[p.AccessToken]; rec != nil {
				rec.story = append(rec.story, "dropped from the revocation queue by "+opName(o))
			}
		}
	case strings.HasPrefix(key, "wal/"):
		var e struct {
			Data struct {
				AccessToken string `json:"access_token"`
			} `json:"data"`
		}
		if json.Unmarshal(prev.Value, &e) == nil && e.Data.AccessToken != "" {
			if rec := inv.tokens[e.Data.AccessToken]; rec != nil {
				rec.story = append(rec.story, "WAL entry deleted by "+opName(o))
			}
		}
	}
}

func (inv *invariants) leaseEvent(tok, what string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if rec := inv.tokens[tok]; rec != nil {
		if strings.HasPrefix(what, "leased") {
			rec.leases++
		}
		rec.story = append(rec.story, what)
	}
}

func (inv *invariants) tokenName(tok string) string {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if rec := inv.tokens[tok]; rec != nil {
		return rec.name()
	}
	return shortTok(tok) + " (not minted through the explorer's transport)"
}

// ---------------------------------------------------------------- I1

func (inv *invariants) handedOut(role, tok string) {
	m := inv.handed[role]
	if m == nil {
		m = map[string]bool{}
		inv.handed[role] = m
	}
	m[tok] = true
}

func (inv *invariants) handedOutSnapshot(role string) map[string]bool {
	out := map[string]bool{}
	for t := range inv.handed[role] {
		out[t] = true
	}
	return out
}

// roleSnapshot: what a role edit or delete retires.
func (inv *invariants) roleSnapshot(role string) map[string]bool {
	out := inv.handedOutSnapshot(role)
	for t := range inv.w.rawRoleTokens(role) {
		out[t] = true
	}
	return out
}

// allSharedSnapshot: what a change of credentials retires.
func (inv *invariants) allSharedSnapshot() map[string]bool {
	out := map[string]bool{}
	for _, m := range inv.handed {
		for t := range m {
			out[t] = true
		}
	}
	for t := range inv.w.rawStoredTokens(tokenStoragePrefix, userTokenStoragePrefix) {
		out[t] = true
	}
	return out
}

// A flush that answered an error (Vault cancelled it, storage failed, a
// revocation is still pending) may have stopped anywhere, or undone a move:
// it binds only the tokens it moved to the revocation queue and that its
// role no longer stores.
func (inv *invariants) flushDone(o *opRun) {
	snap := o.flushSnap
	if a := o.last(); a.err != nil || (a.resp != nil && a.resp.IsError()) {
		stored := inv.w.rawRoleTokens(o.role)
		inv.mu.Lock()
		snap = map[string]bool{}
		for _, t := range o.queued {
			if !stored[t] {
				snap[t] = true
			}
		}
		inv.mu.Unlock()
	}
	for t := range snap {
		if _, ok := inv.flushed[t]; !ok {
			inv.flushed[t] = mark{step: o.endStep, tick: o.endTick, by: o, gen: o.gen}
		}
	}
}

func (inv *invariants) retired(o *opRun) {
	for t := range o.oldSnap {
		if _, ok := inv.retire[t]; !ok {
			inv.retire[t] = mark{step: o.endStep, tick: o.endTick, by: o, gen: o.gen}
		}
	}
}

// binds reports whether what m's operation did binds read o: both ran on the
// same backend generation, or o's generation was created after m's
// operation completed. (Across a restart the two generations' memories are
// kept coherent by nothing: Vault does not invalidate a node's own writes.)
func (inv *invariants) binds(m mark, o *opRun) bool {
	return m.gen == o.gen || (o.gen > m.gen && inv.w.genTick[o.gen] >= m.tick)
}

// checkI1: no token is handed out after it was taken out of service. A flush
// of R that completed binds every creds answer completing after it; a role
// edit or delete, or a config change, binds reads that started after it
// completed.
func (inv *invariants) checkI1(o *opRun, tok string) {
	if m, ok := inv.flushed[tok]; ok && o.endTick > m.tick && inv.binds(m, o) {
		how := "it started after the flush completed"
		if o.startTick < m.tick {
			how = "it started before the flush completed"
		}
		if a := o.last(); a.resp != nil && len(a.resp.Warnings) > 0 {
			how += ", and answered with a warning (served the cached token while Connect failed)"
		}
		inv.fail("I1[after flush]", "%s (completed step %d) handed out %s, which %s took out of service (completed step %d); %s",
			opName(o), o.endStep, inv.tokenName(tok), opName(m.by), m.step, how)
	}
	if m, ok := inv.retire[tok]; ok && o.startTick >= m.tick && inv.binds(m, o) {
		inv.fail("I1[after edit/rotation]", "%s (started step %d) handed out %s, retired by %s (completed step %d)",
			opName(o), o.startStep, inv.tokenName(tok), opName(m.by), m.step)
	}
}

// ---------------------------------------------------------------- I5

// checkI5: a creds read never answers 500: every error is a 4xx error
// response or a coded error other than 500, and says what happened in a
// sentence.
//
// Exempt: a context error answered after the request was cancelled (its
// deadline passed or its client left). Vault ends such a request itself.
func (inv *invariants) checkI5(o *opRun, a opAnswer) {
	if (o.deadlineHit || o.disconnected) && a.err != nil && isContextError(a.err) {
		return
	}
	var msg string
	switch {
	case a.err == nil && a.resp == nil:
		inv.fail("I5[no answer]", "%s answered nothing at all", opName(o))
		return
	case a.err == nil && !a.resp.IsError():
		return
	case a.err == nil:
		msg = a.resp.Error().Error()
	default:
		var coded logical.HTTPCodedError
		if !errors.As(a.err, &coded) {
			inv.fail("I5[500]", "%s answered 500: %s", opName(o), a.err)
			return
		}
		if coded.Code() == 500 || coded.Code() < 400 {
			inv.fail("I5[500]", "%s answered %d: %s", opName(o), coded.Code(), a.err)
			return
		}
		msg = a.err.Error()
	}
	if len(strings.Fields(msg)) < 3 || strings.Contains(msg, "%!") || strings.Contains(msg, "<nil>") {
		inv.fail("I5[not a sentence]", "%s answered an error that is not a sentence: %q", opName(o), msg)
	}
}

func isContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		strings.Contains(err.Error(), context.Canceled.Error()) || strings.Contains(err.Error(), context.DeadlineExceeded.Error())
}

// ---------------------------------------------------------------- I6

// i6Probe is what storage held for a shared read at the moment it failed.
type i6Probe struct {
	leasable bool
	what     string
}

// i6Probe runs on the op's goroutine right after its failed answer.
func (inv *invariants) i6Probe(o *opRun) *i6Probe {
	w := inv.w
	cfg := w.rawConfig()
	r := w.rawRole(o.role)
	if !cfg.configured() || r == nil {
		return &i6Probe{}
	}
	t := w.rawToken(tokenKey(o.role, o.user))
	now := w.clock.now()
	if t == nil || !t.belongsTo(cfg.CredentialsID, r.hash) || !t.leasable(now) {
		return &i6Probe{}
	}
	return &i6Probe{leasable: true, what: fmt.Sprintf("%s, %s of life left", inv.tokenName(t.AccessToken), t.ExpiresAt.Sub(now).Round(time.Second))}
}

// checkI6a: a shared read of R fails only if R has no still-leasable token
// in storage for the current credentials and role definition. Exempt: R or
// the config changed, or the backend restarted, during the read, or an
// operation of another backend generation overlapped it; the client
// went away (nobody sees the answer); Connect refused the credentials
// themselves, or the user's grant, during the read (invalid_client,
// invalid_grant: the engine fails closed); a storage call failed meanwhile
// (the engine cannot tell the token is still stored).
func (inv *invariants) checkI6a(o *opRun) {
	if o.i6 == nil || !o.i6.leasable || o.disconnected {
		return
	}
	a := o.last()
	msg := ""
	if a.err != nil {
		msg = a.err.Error()
	} else if a.resp != nil && a.resp.IsError() {
		msg = a.resp.Error().Error()
	}
	if strings.Contains(msg, "invalid_client") || strings.Contains(msg, "invalid_grant") {
		return // Connect refused the credentials, or the user's grant: the engine fails closed
	}
	if inv.w.storageFailedDuring(o.startTick, o.endTick) || strings.Contains(msg, "explore: storage") || strings.Contains(msg, "explore: no answer from storage") {
		return // storage failed meanwhile, or for the refresh it joined: whether the token is still stored could not be known
	}
	for _, x := range inv.w.ops {
		if x == o || x.startTick > o.endTick || (x.processed && x.endTick < o.startTick) {
			continue
		}
		if x.gen != o.gen {
			return // another backend generation at work: its mints are not coalesced with this one's
		}
		switch x.kind {
		case opConfigRotate, opConfigMove, opConfigDelete, opConfigCreate, opRestart:
			return
		case opRoleEdit, opRoleDelete, opRoleCreate:
			if x.role == o.role {
				return
			}
		}
	}
	inv.mu.Lock()
	sentSome := false
	for _, c := range inv.calls {
		sentSome = sentSome || c.op == o
	}
	inv.mu.Unlock()
	why, class := "Connect failed", "I6[a: failed despite a leasable token]"
	switch {
	case strings.Contains(msg, "max_concurrent_mints") || (o.deadlineHit && !sentSome):
		why, class = "its deadline passed while it waited for a mint slot (or for another reader's queued mint) and it sent nothing to Connect", "I6[a: starved of mint slots]"
	case o.deadlineHit:
		why, class = "its deadline passed while it waited for Connect", "I6[a: deadline while refreshing]"
	}
	inv.fail(class, "(a) %s failed (%s) while role %s had a still-leasable token in storage (%s): %s",
		opName(o), why, o.role, o.i6.what, msg)
}

// i6bProbe: the pending revocations of tokens minted at host y when a
// periodic pass with host x down began.
type i6bProbe struct {
	x, y    string
	pending map[string]string // storage key -> token
	flips   int               // len(world.hostFlips) when it began
}

func (inv *invariants) tokenHost(tok string) string {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if rec := inv.tokens[tok]; rec != nil {
		return rec.call.host
	}
	return ""
}

func (inv *invariants) pendingHosts() map[string]int {
	out := map[string]int{}
	for _, k := range inv.w.queueKeys() {
		if inv.w.prefilled[k] {
			continue // names no token the transport saw
		}
		if p, _ := getJSON[pendingRevocation](context.Background(), inv.w.inner, k); p != nil {
			out[inv.tokenHost(p.AccessToken)]++
		}
	}
	return out
}

func (inv *invariants) i6bStart(x, y string) *i6bProbe {
	p := &i6bProbe{x: x, y: y, pending: map[string]string{}, flips: len(inv.w.hostFlips)}
	// An entry claimed by an immediate attempt still in flight is that
	// attempt's (one owner per entry); one backing off waits for its time.
	claims := inv.w.b.claims
	claims.mu.Lock()
	claimed := maps.Clone(claims.entries)
	claims.mu.Unlock()
	now := inv.w.clock.now()
	for _, k := range inv.w.queueKeys() {
		if _, held := claimed[k]; held || inv.w.prefilled[k] {
			continue
		}
		if e, _ := getJSON[pendingRevocation](context.Background(), inv.w.inner, k); e != nil && inv.tokenHost(e.AccessToken) == y &&
			!now.Before(e.RetryAt) {
			p.pending[k] = e.AccessToken
		}
	}
	return p
}

// passOverlapped reports whether another pass over the queues (a periodic
// pass, a rollback, a flush) ran at the same time as o: one pass per role at
// a time, so o skipped the roles that pass held.
func (inv *invariants) passOverlapped(o *opRun) bool {
	for _, other := range inv.w.ops {
		switch other.kind {
		case opPeriodic, opPeriodicHostDown, opRollbackImmediate, opFlush, opFlushHostDown:
		default:
			continue
		}
		if other != o && other.startTick <= o.endTick && (!other.processed || other.endTick >= o.startTick) {
			return true
		}
	}
	return false
}

// checkI6b: after one periodic pass with host x down (and y answering
// without faults throughout), no revocation of a token minted at y that was
// pending when the pass began is still pending.
func (inv *invariants) checkI6b(o *opRun) {
	p := o.i6b
	if p == nil {
		return
	}
	inv.i6bPasses++
	if len(p.pending) == 0 || o.disconnected || o.deadlineHit || len(inv.w.hostFlips) != p.flips || inv.passOverlapped(o) {
		return
	}
	inv.mu.Lock()
	for _, c := range inv.calls {
		if c.op == o && c.host == p.y && c.fault != faultNone {
			inv.mu.Unlock()
			return // host y did not answer throughout (an attempt timed out on the clock)
		}
	}
	inv.mu.Unlock()
	inv.i6bJudged++
	var left []string
	for k, tok := range p.pending {
		if e, _ := getJSON[pendingRevocation](context.Background(), inv.w.inner, k); e != nil && e.AccessToken == tok {
			left = append(left, inv.tokenName(tok))
		}
	}
	sort.Strings(left)
	if len(left) > 0 {
		inv.fail("I6[b: periodic pass stops at a down host]", "(b) after %s, %d of the %d pending revocations of tokens minted at host %s (which answered throughout) are still pending: %s",
			opName(o), len(left), len(p.pending), p.y, strings.Join(left, ", "))
	}
}

// ---------------------------------------------------------------- leaks

// checkLeaks: no answer names a client secret (LEAK[answer]); no error or
// warning quotes a user id or code its request carried, nor any access
// token (LEAK[echo]): Connect's error_description may echo what was sent,
// and errors and warnings reach Vault's audit log un-HMAC'd.
func (inv *invariants) checkLeaks(o *opRun) {
	inv.mu.Lock()
	secrets := make([]string, 0, len(inv.secretFor))
	for s := range inv.secretFor {
		secrets = append(secrets, s)
	}
	inv.mu.Unlock()
	for _, a := range o.answers {
		b, _ := json.Marshal(a.resp)
		text := string(b)
		if a.err != nil {
			text += a.err.Error()
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				inv.fail("LEAK[answer]", "%s answered with a client secret in it", opName(o))
				return
			}
		}
		said := answerWords(a)
		switch {
		case o.user != "" && strings.Contains(said, o.user):
			inv.fail("LEAK[echo]", "%s answered an error or warning quoting the user id it was sent with: %q", opName(o), said)
			return
		case o.code != "" && strings.Contains(said, o.code):
			inv.fail("LEAK[echo]", "%s answered an error or warning quoting the authorization code it was sent with: %q", opName(o), redactTokens(said))
			return
		case strings.Contains(said, "xtok") || strings.Contains(said, "xfill"):
			inv.fail("LEAK[echo]", "%s answered an error or warning that names an access token: %q", opName(o), redactTokens(said))
			return
		}
	}
}

// answerWords is what an answer says in words: its error, and its warnings.
func answerWords(a opAnswer) string {
	var parts []string
	if a.err != nil {
		parts = append(parts, a.err.Error())
	}
	if a.resp != nil {
		if a.resp.IsError() {
			parts = append(parts, a.resp.Error().Error())
		}
		parts = append(parts, a.resp.Warnings...)
	}
	return strings.Join(parts, " | ")
}

var tokenLike = regexp.MustCompile(`x(tok|fill|code)[0-9]+`)

// redactTokens names the explorer's tokens and codes by a short hash.
func redactTokens(s string) string {
	return tokenLike.ReplaceAllStringFunc(s, func(t string) string { return "<" + shortTok(t) + ">" })
}

// checkLogLeaks: the backend's logs name no access token nor code.
func (inv *invariants) checkLogLeaks(logs string) {
	if m := tokenLike.FindString(logs); m != "" {
		inv.fail("LEAK[logs]", "the backend's logs name an access token or code (%s)", redactTokens(m))
	}
}

// ---------------------------------------------------------------- I7

// checkI7: no operation of any path answers an error without a status: an
// error is a logical.HTTPCodedError, a logical error Vault maps to a status
// (logical.ErrReadOnly, which it forwards; ErrUnsupportedOperation,
// ErrUnsupportedPath, ErrInvalidRequest, ErrPermissionDenied), or a 400
// error response. Exempt, as for I5: a context error answered after the
// request was cancelled. Creds reads are I5's, which is stricter.
func (inv *invariants) checkI7(o *opRun) {
	var path string
	switch o.kind {
	case opRevokeLease, opVaultRevoke:
		path = "revoke"
	case opRenewLease:
		path = "renew"
	case opFlush, opFlushHostDown:
		path = "flush"
	case opConfigRotate, opConfigMove, opConfigCreate, opConfigDelete:
		path = "config"
	case opRoleEdit, opRoleDelete, opRoleCreate:
		path = "roles"
	case opTidy:
		path = "tidy"
	default:
		return
	}
	for _, a := range o.answers {
		if a.err == nil || hasStatus(a.err) {
			continue
		}
		if (o.deadlineHit || o.disconnected) && isContextError(a.err) {
			continue
		}
		inv.fail("I7["+path+": error without a status]", "%s answered an error without a status (Vault answers 500): %s", opName(o), redactTokens(a.err.Error()))
		return
	}
}

// hasStatus reports whether Vault answers err with a status of its own.
func hasStatus(err error) bool {
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) && coded.Code() >= 400 {
		return true
	}
	for _, e := range []error{logical.ErrReadOnly, logical.ErrUnsupportedOperation, logical.ErrUnsupportedPath, logical.ErrInvalidRequest, logical.ErrPermissionDenied} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- I8

// noteQueueWriteLocked records a write to the queue the current
// generation's counts cannot have seen.
func (inv *invariants) noteQueueWriteLocked(gen int, key string, landed bool) {
	if !strings.HasPrefix(key, revokingStoragePrefix) {
		return
	}
	if landed || int64(gen) != inv.w.curGen.Load() {
		inv.foreignTick = int(inv.w.tickNow.Load())
	}
}

// foreignQueueWrite: the world wrote the queue behind the engine's back.
func (inv *invariants) foreignQueueWrite() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.foreignTick = inv.w.tick
}

// passDone: a periodic pass of the current generation that answered
// without error, begun after the last foreign write, recounted every queue.
func (inv *invariants) passDone(o *opRun) {
	a := o.last()
	if o.gen != inv.w.gen || a.err != nil || (a.resp != nil && a.resp.IsError()) || o.disconnected || o.deadlineHit {
		return
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if o.startTick > inv.foreignTick {
		inv.recountGen, inv.recountTick = o.gen, o.startTick
	}
}

// pendingGauge is what instacart_pending_revocations says of role (the
// backend's counts, which the gauge is set to at every scrape), and
// whether it says anything yet.
func pendingGauge(b *backend, role string) (int64, bool) { return b.queued.get(role) }

// gaugeRoles are the roles the backend counts queued tokens for.
func gaugeRoles(b *backend) []string {
	b.queued.mu.Lock()
	defer b.queued.mu.Unlock()
	out := make([]string, 0, len(b.queued.roles))
	for r := range b.queued.roles {
		out = append(out, r)
	}
	return out
}

// checkI8 runs at quiescence (nothing in flight, nothing parked): for every
// role, the pending-revocations gauge equals the entries storage holds under
// revoking/<role>/ (at any depth; those set aside under revoking/@aside/
// not counted). Judged once the current generation's counts are known and a
// periodic pass that ended well has recounted them since the last write
// they could not see (another generation's, a write storage reported failed
// though it landed, a pre-fill).
func (inv *invariants) checkI8() {
	w := inv.w
	inv.mu.Lock()
	judged := inv.recountGen == w.gen && inv.recountTick > inv.foreignTick
	inv.mu.Unlock()
	if !judged {
		return
	}
	held := map[string]int{}
	for _, k := range w.queueKeys() {
		held[queueRole(k)]++
	}
	roles := map[string]bool{}
	for r := range held {
		roles[r] = true
	}
	for _, r := range gaugeRoles(w.b) {
		roles[r] = true
	}
	names := make([]string, 0, len(roles))
	for r := range roles {
		names = append(names, r)
	}
	sort.Strings(names)
	inv.i8Judged++
	for _, r := range names {
		n, known := pendingGauge(w.b, r)
		if !known {
			return
		}
		if int(n) != held[r] {
			inv.fail("I8[pending gauge ≠ queue]", "at quiescence the pending-revocations gauge of role %s says %d, storage holds %d under revoking/%s/ (generation %d; its counts were last recounted by a pass begun at tick %d)",
				r, n, held[r], r, w.gen, inv.recountTick)
			return
		}
	}
}

// ---------------------------------------------------------------- I9

// answered records when o answered, against Connect's handling of calls.
func (inv *invariants) answered(o *opRun) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.events++
	o.answerSeq = inv.events
}

// checkI9: a token Connect revoked is never handed out afterwards.
func (inv *invariants) checkI9(o *opRun, tok string) {
	inv.mu.Lock()
	at, ok := inv.revokedAt[tok]
	inv.mu.Unlock()
	if ok && at < o.answerSeq {
		inv.mu.Lock()
		story := ""
		if rec := inv.tokens[tok]; rec != nil {
			story = strings.Join(rec.story, "; ")
		}
		inv.mu.Unlock()
		inv.fail("I9[revoked token served]", "%s handed out %s, which Connect had revoked before it answered. Story: %s", opName(o), inv.tokenName(tok), story)
	}
}

// answerLostToCaller: c's answer was lost because its caller left.
func (inv *invariants) answerLostToCaller(c *wireCall) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if rec := inv.tokens[c.token]; rec != nil && c.token != "" {
		rec.callerLeft = true
		rec.story = append(rec.story, "its answer was lost: the caller of "+opName(c.op)+" left as Connect minted it")
	}
}

// markIrrevocable: Vault gave up revoking a lease of tok.
func (inv *invariants) markIrrevocable(tok string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if rec := inv.tokens[tok]; rec != nil {
		rec.irrevocable = true
	}
}

// ---------------------------------------------------------------- I2

// checkI2 runs at quiescence, after the drain: every token whose answer
// reached the engine is held by a live lease, in storage, revoked at
// Connect, or expired (or in its last second, which the engine never
// leases). Tokens whose answer was lost are counted apart; each is one
// injected timeout after handling, and Connect minted nothing the transport
// did not see.
func (inv *invariants) checkI2() {
	w := inv.w
	now := w.clock.now()
	held := map[string]bool{}
	for _, l := range w.leases {
		if l.live(now) {
			held[l.token] = true
		}
	}
	inv.mu.Lock()
	order := append([]*tokenRec(nil), inv.order...)
	lostFaults := inv.lostFaults
	inv.mu.Unlock()
	inStorage := w.storedTokenNames()

	lost := 0
	perHost := map[string]int{}
	for _, rec := range order {
		perHost[rec.call.host]++
		if rec.lost {
			lost++
			continue
		}
		if held[rec.tok] || inStorage[rec.tok] {
			continue
		}
		h := w.hostByName(rec.call.host)
		inv.mu.Lock()
		real := inv.realOf[rec.tok]
		inv.mu.Unlock()
		info, ok := h.fake.Token(real)
		if !ok {
			inv.fail("I2[bookkeeping]", "%s was delivered by host %s, which does not know it", rec.name(), h.name)
			continue
		}
		// Expired: the engine counts a token's life from when the attempt
		// that minted it began, Connect from when it handled it; the
		// engine's earlier count is the one it can act on (it skips
		// revoking a token it counts as expired), and the last second is
		// never leased.
		expires := info.ExpiresAt.Add(-rec.call.handledAt.Sub(rec.call.sentAt))
		if info.Revoked || !now.Before(expires.Add(-minLeasable)) {
			continue
		}
		inv.mu.Lock()
		story := strings.Join(rec.story, "; ")
		inv.mu.Unlock()
		if inv.lostWithProcess(rec) {
			inv.mu.Lock()
			inv.unsavedLost++
			inv.mu.Unlock()
			continue
		}
		tag, why := inv.cause(rec)
		inv.fail("I2["+tag+"]", "orphan %s: live at host %s for another %s, held by no live lease, not in storage, not revoked. Cause: %s. Story: %s",
			rec.name(), h.name, info.ExpiresAt.Sub(now).Round(time.Second), why, story)
	}
	if lost != lostFaults {
		inv.fail("I2[bookkeeping]", "%d tokens never reached the engine, but %d timeouts after handling were injected", lost, lostFaults)
	}
	for _, h := range w.hosts {
		if n := len(h.fake.Tokens()); n != perHost[h.name] {
			inv.fail("I2[bookkeeping]", "host %s minted %d tokens, the transport saw %d", h.name, n, perHost[h.name])
		}
	}
}

// lostWithProcess reports the one loss the engine cannot prevent: a token
// minted to verify credentials that storage refused to save (so nothing
// durable can revoke it: the queue revokes with saved credentials only),
// whose process was cleaned up (a restart) before Connect took any of its
// in-memory revocations. Like an answer lost with a killed node, it is
// counted, not failed.
func (inv *invariants) lostWithProcess(rec *tokenRec) bool {
	if inv.heldOnlyByCleanedProcess(rec) {
		return true
	}
	o := rec.call.op
	if o == nil || (o.kind != opConfigRotate && o.kind != opConfigMove && o.kind != opConfigCreate) || !o.processed {
		return false
	}
	a := o.last()
	if a.err == nil || !strings.Contains(a.err.Error(), "writing config") {
		return false // the credentials were saved: the queue had what it needed
	}
	return inv.w.gen > o.gen // its process was cleaned up since
}

// heldOnlyByCleanedProcess reports the other loss no engine can prevent: a
// token only ever in the memory of a process that was cleaned up while
// storage refused its writes (so it could not be queued) and whose
// revocations Connect did not take (so it could not be revoked).
func (inv *invariants) heldOnlyByCleanedProcess(rec *tokenRec) bool {
	if rec.stored || rec.leases > 0 || inv.w.gen <= rec.call.gen || !inv.w.cleanedInOutage[rec.call.gen] {
		return false
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for _, s := range rec.story {
		if strings.HasPrefix(s, "queued for revocation") {
			return false
		}
	}
	real := inv.realOf[rec.tok]
	for _, c := range inv.calls {
		if c.endpoint == "revoke" && (c.p.Token == rec.tok || c.p.Token == real) {
			return true // it was tried, and Connect did not take it
		}
	}
	return false
}

// cause explains how an orphan came to be, naming the known defect it shows
// when it is one.
func (inv *invariants) cause(rec *tokenRec) (tag, why string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	o := rec.call.op
	kind := opKind(-1)
	if o != nil {
		kind = o.kind
	}
	switch {
	case rec.irrevocable:
		return "lease revocation given up, token never revoked", "Vault gave up revoking its lease (irrevocable after repeated failures, e.g. the queue write failing) and the token was never revoked at Connect"
	case rec.callerLeft && (kind == opConfigRotate || kind == opConfigMove || kind == opConfigCreate):
		return "verify token minted as its caller left", "minted to verify credentials while the config write's caller left: the answer was lost to the request's context and nothing revoked it"
	case rec.callerLeft:
		return "token minted as its caller left", "minted on the context of a request whose caller left: the answer was lost and nothing revoked it"
	case rec.garbage:
		return "clean-up tried once: unusable answer", "Connect's answer was an unparseable 200; the client's one revocation of the token it named failed and nothing retried it"
	case kind == opConfigRotate || kind == opConfigMove || kind == opConfigCreate:
		return "clean-up tried once: verify token", "minted to verify credentials; its one revocation failed"
	case (kind == opReadExclusive || kind == opReadCode) && rec.leases == 0:
		return "clean-up tried once: exclusive token nobody leased", "an exclusive token nobody leased (its reader gave up, or it was discarded); its clean-up revocation was tried once"
	case kind == opReadExclusive || kind == opReadCode:
		return "exclusive lease ended, token live", "an exclusive token whose lease ended without it being revoked"
	case !rec.stored && rec.leases == 0:
		return "clean-up tried once: shared token discarded", "a shared token never stored nor leased (discarded); its revocation was tried once"
	case len(rec.removals) == 0:
		return "dropped from the revocation queue", "a shared token whose leases all ended, dropped from the revocation queue without being revoked"
	}
	rm := rec.removals[len(rec.removals)-1]
	switch {
	case rm.kind == "overwritten" && rm.by != nil:
		mine, theirs := inv.secretFor[rec.call.p.ClientSecret], inv.secretFor[rm.by.call.p.ClientSecret]
		switch {
		case theirs.order < mine.order:
			return "old-credentials mint overwrote the new shared token", fmt.Sprintf("overwritten in storage by %s, minted with OLDER credentials (a mint that finished after a rotation overwrote the new shared token)", rm.by.name())
		case theirs.order > mine.order:
			return "old-credentials shared token never revoked", fmt.Sprintf("overwritten in storage by %s, minted with newer credentials after a rotation; the old-credentials token was never revoked", rm.by.name())
		}
		return "replaced shared token untracked", fmt.Sprintf("replaced in storage by %s (a refresh with the same credentials); the engine stopped tracking it while it was live, and all its leases ended", rm.by.name())
	case rm.op == nil:
		return "deleted/edited role's token never revoked", "removed from storage by background work (tidy or a role's clean-up) while live, never revoked"
	case rm.op.kind == opRoleEdit || rm.op.kind == opRoleDelete:
		return "deleted/edited role's token never revoked", "removed from storage when its role was edited or deleted, never revoked"
	case rm.op.kind == opTidy || rm.op.kind == opPeriodic || rm.op.kind == opPeriodicHostDown || rm.op.kind == opRollbackImmediate:
		return "deleted/edited role's token never revoked", "removed from storage by tidy (role changed or deleted) while live, never revoked"
	case rm.op.kind == opFlush || rm.op.kind == opFlushHostDown:
		return "dropped from the revocation queue", "flushed, then dropped from the revocation queue without being revoked"
	}
	return "removed while live", "removed from storage by " + opName(rm.op) + " while live"
}
