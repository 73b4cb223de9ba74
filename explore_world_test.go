//go:build explore

package instacart

// The schedule explorer's world: a frozen clock, two Connect hosts behind an
// in-process transport that parks and injects faults, the operations the
// explorer mixes, and Vault's part (leases, their expiry and revocation, the
// API client's retry of 5xx answers, the rollback). explore_test.go has the
// overview.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// fakeClock is the world's clock: the backend's b.now reads it, and each
// Connect host is set to it before it handles a request. It only moves when
// the scheduler advances it, so time-dependent decisions (freshness, lease
// TTLs, expiry) replay exactly.
type fakeClock struct{ nanos atomic.Int64 }

var exploreEpoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func (c *fakeClock) now() time.Time  { return time.Unix(0, c.nanos.Load()).UTC() }
func (c *fakeClock) set(t time.Time) { c.nanos.Store(t.UnixNano()) }

// host is one Connect host: a connectfake.Server reached only through its
// Handler (its listener is never used), and the secrets written for its one
// client id. The fake keeps one secret per client; the host lets every
// secret ever added for the client through (as Connect keeps old credentials
// valid until they are retired), by keying the fake with the presented one
// just before it handles the request.
type host struct {
	name     string // "A", "B"
	baseURL  string
	hostport string
	clientID string
	fake     *connectfake.Server
	handler  http.Handler

	mu      sync.Mutex
	secrets map[string]bool // guarded by mu
	fakeAdv time.Duration   // what the fake's clock was advanced by, guarded by mu

	down bool // scheduler goroutine only
}

func (h *host) addSecret(secret string) {
	h.mu.Lock()
	h.secrets[secret] = true
	h.mu.Unlock()
}

// handle serves one request with the fake, its clock set to now.
func (h *host) handle(now time.Time, path, contentType string, body []byte, p wireParams) *httptest.ResponseRecorder {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := now.Sub(time.Now().Add(h.fakeAdv))
	h.fake.Advance(d)
	h.fakeAdv += d
	if p.ClientID == h.clientID && h.secrets[p.ClientSecret] {
		h.fake.AddClient(h.clientID, p.ClientSecret)
	} else {
		h.fake.AddClient(h.clientID, "explore-not-a-secret-of-this-client")
	}
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rr := httptest.NewRecorder()
	h.handler.ServeHTTP(rr, req)
	return rr
}

// faultKind is what the transport does to one Connect call.
type faultKind int

const (
	faultNone faultKind = iota
	faultRefused
	fault503
	fault429RetryAfter0
	// fault429NoRetryAfter: the mount's token requests pause (connect.Throttle),
	// through connect.Config.Sleep, which costs the world no time.
	fault429NoRetryAfter
	faultTimeoutAfterHandling
	faultInvalidClient
	faultGarbage200
	// faultTimeoutUnhandled: the attempt's request_timeout passed on the fake
	// clock while it was parked; sent, never processed. Chosen by time, never
	// by the fault RNG.
	faultTimeoutUnhandled
	// faultEchoRefusal: Connect refuses the grant (400 invalid_grant) with an
	// error_description that quotes what the request carried (the user id
	// of an assertion, the code). Token requests carrying either only.
	faultEchoRefusal
	// faultEcho503: a 503 whose error_description quotes what the request
	// carried (a user id, a code, the token being revoked).
	faultEcho503
	// faultCallerLeaves: Connect handles the call, and its caller leaves
	// before the answer is read: the request's context is cancelled (an
	// answer lost to whoever tied the call to that context). Calls of a
	// request only.
	faultCallerLeaves
)

func (f faultKind) String() string {
	return [...]string{"ok", "refused", "503", "429 Retry-After: 0", "429", "timeout after handling", "invalid_client", "unparseable 200", "timeout, not handled",
		"400 invalid_grant quoting the request", "503 quoting the request", "the caller leaves while Connect handles it"}[f]
}

// faultWeights: the relative odds of each fault once the RNG decided a call
// faults. faultGarbage200 applies to token requests only.
var faultWeights = []struct {
	f faultKind
	w int
}{
	{fault503, 3},
	{fault429RetryAfter0, 2},
	{fault429NoRetryAfter, 1},
	{faultTimeoutAfterHandling, 2},
	{faultRefused, 2},
	{faultInvalidClient, 1},
	{faultGarbage200, 2},
	{faultEchoRefusal, 2},
	{faultEcho503, 1},
	{faultCallerLeaves, 2},
}

// tokenOnly: faults only token requests get. A refusal of the credentials
// is for good when it answers a revocation (the engine rightly stops
// trying), and would then have to stay true of every later call; as a blip
// it is only consistent on token requests, which the engine retries after
// its hold. A revocation has no token to garble.
func (f faultKind) tokenOnly() bool {
	return f == faultGarbage200 || f == faultInvalidClient || f == faultEchoRefusal
}

// appliesTo reports whether f can be given to the parked call pc.
func (f faultKind) appliesTo(pc *parkedCall) bool {
	isToken := strings.Contains(pc.label, " token ")
	switch {
	case f.tokenOnly() && !isToken:
		return false
	case f == faultEchoRefusal:
		// Only a grant that carries a user id or a code has one to quote.
		return strings.Contains(pc.label, " "+string(connect.GrantFulfillmentUserAssertion)) || strings.Contains(pc.label, " "+string(connect.GrantAuthorizationCode))
	case f == faultCallerLeaves:
		return pc.op != nil && pc.op.cancel != nil && !pc.op.disconnected && pc.op.kind != opRestart
	}
	return true
}

// wireParams are the fields of a token or revoke request body.
type wireParams struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	GrantType    string `json:"grant_type"`
	Scope        string `json:"scope"`
	Assertion    string `json:"assertion"`
	Code         string `json:"code"`
	RedirectURI  string `json:"redirect_uri"`
	Token        string `json:"token"`
}

// connectTransport routes Connect calls by host to the fakes' handlers,
// without any network. It parks every call at the scheduler, emulates
// httptrace as a real transport does (GetConn, then GotConn only once the
// request goes out), applies the fault the scheduler chose, and records every
// call.
type connectTransport struct {
	w   *world
	gen int
	// attemptTimeout is the client's configured request_timeout, applied on
	// the fake clock: an attempt still parked when it passes times out.
	attemptTimeout time.Duration
}

// refusedError is what a dial to a host that is down returns.
func refusedError(addr string) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: fakeAddr(addr), Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// lostAnswerError: Connect handled the request, the answer never came back.
type lostAnswerError struct{}

func (lostAnswerError) Error() string {
	return "explore: no answer (timed out after Connect handled the request)"
}
func (lostAnswerError) Timeout() bool   { return true }
func (lostAnswerError) Temporary() bool { return true }

func (t *connectTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w := t.w
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		_ = req.Body.Close()
	}
	var p wireParams
	_ = json.Unmarshal(body, &p)
	h := w.hostByAddr(req.URL.Host)
	hostName := "?" + req.URL.Host
	if h != nil {
		hostName = h.name
	}
	endpoint := "token"
	if req.URL.Path == connectfake.PathRevoke {
		endpoint = "revoke"
	}
	sentAt := w.clock.now()
	ctx := req.Context()
	trace := httptrace.ContextClientTrace(ctx)
	if trace != nil && trace.GetConn != nil {
		trace.GetConn(req.URL.Host)
	}
	v := w.sched.park(ctx, t.gen, &parkedCall{kind: "connect", host: hostName, deadline: w.clock.now().Add(t.attemptTimeout)},
		hostName+" "+endpoint+" "+p.GrantType+userOfAssertion(p.Assertion))

	call := w.inv.beginCall(opFrom(ctx), hostName, endpoint, p, v.fault, sentAt)
	call.gen = t.gen
	if h == nil || v.closed || v.fault == faultRefused {
		return nil, refusedError(req.URL.Host)
	}
	if err := ctx.Err(); err != nil {
		return nil, err // the caller left before a connection was made
	}
	// From here on the request is on the wire.
	if trace != nil {
		if trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{})
		}
		if trace.WroteHeaders != nil {
			trace.WroteHeaders()
		}
		if trace.WroteRequest != nil {
			trace.WroteRequest(httptrace.WroteRequestInfo{})
		}
	}
	w.inv.sent(call)
	switch v.fault {
	case faultTimeoutUnhandled:
		return nil, lostAnswerError{}
	case fault503:
		return answer(req, http.StatusServiceUnavailable, nil, `{"error":"server_error","error_description":"Service Unavailable"}`), nil
	case fault429RetryAfter0:
		return answer(req, http.StatusTooManyRequests, http.Header{"Retry-After": {"0"}}, `{"error":"too_many_requests","error_description":"Too Many Requests"}`), nil
	case fault429NoRetryAfter:
		return answer(req, http.StatusTooManyRequests, nil, `{"error":"too_many_requests","error_description":"Too Many Requests"}`), nil
	case faultInvalidClient:
		return answer(req, http.StatusUnauthorized, nil, `{"error":"invalid_client","error_description":"Client authentication failed."}`), nil
	case faultEchoRefusal:
		return answer(req, http.StatusBadRequest, nil, echoBody("invalid_grant", "The grant was refused", p)), nil
	case faultEcho503:
		return answer(req, http.StatusServiceUnavailable, nil, echoBody("server_error", "Service unavailable", p)), nil
	}
	// The engine sees aliases of the fake's random tokens and codes (so
	// storage keys derived from them, and the order the engine walks them
	// in, replay); the fake gets its own back.
	fakeBody := w.inv.unalias(body)
	rr := h.handle(w.clock.now(), req.URL.Path, req.Header.Get("Content-Type"), fakeBody, p)
	respBody := rr.Body.String()
	tok := ""
	if endpoint == "token" && rr.Code == http.StatusOK {
		var m map[string]any
		if json.Unmarshal(rr.Body.Bytes(), &m) == nil {
			if real, _ := m["access_token"].(string); real != "" {
				tok = w.inv.aliasToken(real)
				m["access_token"] = tok
				b, _ := json.Marshal(m)
				respBody = string(b)
			}
		}
	}
	w.inv.handled(call, rr.Code, tok)
	if v.leave != nil {
		// The caller leaves now: a call on its context loses the answer
		// (net/http answers the context's error); one the engine made on a
		// context of its own still gets it.
		v.leave()
		if err := ctx.Err(); err != nil {
			w.inv.answerLostToCaller(call)
			return nil, err
		}
	}
	switch {
	case v.fault == faultTimeoutAfterHandling:
		return nil, lostAnswerError{}
	case v.fault == faultGarbage200 && tok != "":
		return answer(req, http.StatusOK, nil, fmt.Sprintf(`{"access_token":%q,"token_type":"Bearer","expires_in":"garbage"}`, tok)), nil
	}
	return answer(req, rr.Code, rr.Header(), respBody), nil
}

// echoBody is an OAuth error whose error_description quotes what the
// request carried, as some servers' do: the user id of an assertion, the
// code, the token being revoked.
func echoBody(code, what string, p wireParams) string {
	var echo []string
	if u, ok := decodeAssertionUser(p.Assertion); ok && p.Assertion != "" {
		echo = append(echo, "user "+u)
	}
	if p.Code != "" {
		echo = append(echo, "code "+p.Code)
	}
	if p.Token != "" {
		echo = append(echo, "token "+p.Token)
	}
	desc := what
	if len(echo) > 0 {
		desc += " for " + strings.Join(echo, ", ")
	}
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	return string(b)
}

func answer(req *http.Request, status int, header http.Header, body string) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	header = header.Clone()
	header.Set("Content-Type", "application/json; charset=utf-8")
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", status, http.StatusText(status)),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// userOfAssertion names the user of an assertion grant in labels (user ids
// are the explorer's own, not random).
func userOfAssertion(a string) string {
	if a == "" {
		return ""
	}
	if u, ok := decodeAssertionUser(a); ok {
		return " " + u
	}
	return ""
}

// ---------------------------------------------------------------- operations

type opKind int

const (
	opReadShared opKind = iota
	opReadUser
	opUserBurst      // shoppers arriving at once: reads for several users in one decision
	opNoisyNeighbour // a burst of per-user reads, then a read of a quiet shared role, in one decision (I6a)
	opReadExclusive
	opReadCode
	opRevokeLease
	opRenewLease
	opFlush
	opFlushHostDown // the host that minted the role's tokens goes down, then the role is flushed (pending revocations, for I6b)
	opConfigRotate
	opConfigMove
	opRotateDuringMint // a rotation or move while a shared read's mint is at Connect, then a read with the new credentials
	opConfigDelete
	opConfigCreate
	opRoleEdit
	opRoleDelete
	opRoleCreate
	opTidy
	opPeriodic
	opPeriodicHostDown
	opOutage // revocations left pending at both hosts, then a periodic pass with one down (I6b)
	opRestart
	opVaultRevoke // Vault revoking a lease at expiry, or retrying a failed revocation
	opRollbackImmediate
	opUpgrade // a restart onto storage as v0.1.0 left it: per-user tokens at tokens/<role>/user-<hash>
	// opQueueRace: a flush, a periodic pass and a lease revocation of one
	// role started in one decision, their calls interleaved by the
	// scheduler (two passes over one queue, a lease's token queued and
	// dropped beside them); sometimes the flush's drop of a stored token
	// fails once it has queued it.
	opQueueRace
	// opConfigVerifyLeaves: a config write with verify=true whose caller
	// leaves mid-request: while Connect mints the verify token, or at one
	// of its storage calls.
	opConfigVerifyLeaves
	// opRevokeWritesFailing: Vault revokes an exclusive lease while storage
	// refuses writes, retrying with its backoff until it gives up (the
	// lease is irrevocable after maxVaultRevokeAttempts failures).
	opRevokeWritesFailing
	numOpKinds
)

// opWeights: the odds of each kind when the scheduler starts an operation
// (kinds that do not apply to the world as it is are skipped).
var opWeights = [numOpKinds]int{
	opReadShared:          14,
	opReadUser:            8,
	opUserBurst:           2,
	opNoisyNeighbour:      3,
	opReadExclusive:       5,
	opReadCode:            5,
	opRevokeLease:         5,
	opRenewLease:          2,
	opFlush:               5,
	opFlushHostDown:       2,
	opConfigRotate:        2,
	opConfigMove:          2,
	opRotateDuringMint:    3,
	opConfigDelete:        1,
	opConfigCreate:        6,
	opRoleEdit:            2,
	opRoleDelete:          1,
	opRoleCreate:          4,
	opTidy:                1,
	opPeriodic:            2,
	opPeriodicHostDown:    2,
	opOutage:              1,
	opRestart:             1,
	opUpgrade:             1,
	opQueueRace:           3,
	opConfigVerifyLeaves:  2,
	opRevokeWritesFailing: 1,
}

// opRun is one operation: one Vault request (or a few: the API client's
// retries of a code write), run on its own goroutine.
type opRun struct {
	id     int
	name   string // "op12"
	kind   opKind
	desc   string // what it does, without secrets
	role   string
	user   string
	code   string
	b      *backend
	gen    int
	store  *parkingStorage // the storage Vault hands the backend of generation gen
	ctx    context.Context
	cancel context.CancelFunc

	startStep, endStep int
	// startTick and endTick order starts and completions: the world's tick
	// moves each time completions are processed, so an op that started at
	// tick t started after every completion processed at ticks <= t.
	startTick, endTick int
	startAt, deadline  time.Time // fake clock
	faultless          bool      // its own Connect calls get no injected fault
	disconnected       bool      // the client went away (scheduler only)
	deadlineHit        bool      // the fake clock passed its deadline (scheduler only)

	done      atomic.Bool
	processed bool

	// Written by the op goroutine before done is set.
	answers []opAnswer
	i6      *i6Probe // shared reads: what storage held when the read failed
	queued  []string // tokens it queued for revocation (guarded by invariants.mu)

	// answerSeq orders its answer against Connect's handling (I9).
	answerSeq int

	// Scheduler-side bookkeeping, set at start.
	lease     *lease
	flushSnap map[string]bool
	oldSnap   map[string]bool
	i6b       *i6bProbe
	secret    string // config writes: the secret written (never printed)
}

type opAnswer struct {
	resp *logical.Response
	err  error
}

func (o *opRun) last() opAnswer {
	if len(o.answers) == 0 {
		return opAnswer{}
	}
	return o.answers[len(o.answers)-1]
}

type opCtxKey struct{}

func withOp(ctx context.Context, o *opRun) context.Context {
	return context.WithValue(ctx, opCtxKey{}, o)
}

func opFrom(ctx context.Context) *opRun {
	o, _ := ctx.Value(opCtxKey{}).(*opRun)
	return o
}

// The roles the explorer uses. Edits toggle scopes; deletes and re-creates
// give a role a new incarnation.
const (
	roleCC    = "cc"    // client_credentials, shared
	roleCC2   = "cc2"   // client_credentials, shared: the other role of I6
	roleUsers = "users" // fulfillment_user_assertion, shared per user
	roleExcl  = "excl"  // client_credentials, exclusive
	roleLink  = "link"  // authorization_code (exclusive)

	exploreRedirect = "https://example.com/explore-callback"
)

var (
	sharedRoles   = []string{roleCC, roleCC2, roleUsers}
	editableRoles = []string{roleCC, roleCC2, roleUsers}
	exploreUsers  = []string{"u-1", "u-2", "u-3", "u-4", "u-5", "u-6", "u-7", "u-8", "u-9"}
	allRoles      = []string{roleCC, roleCC2, roleUsers, roleExcl, roleLink}
)

func roleDefinition(name string) map[string]any {
	switch name {
	case roleCC:
		return map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}
	case roleCC2:
		return map[string]any{"grant_type": "client_credentials", "scopes": "connect:data_ingestion"}
	case roleUsers:
		return map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "u-*"}
	case roleExcl:
		return map[string]any{"grant_type": "client_credentials", "scopes": "connect:compliance", "token_reuse": "exclusive"}
	case roleLink:
		return map[string]any{"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": exploreRedirect}
	}
	panic("unknown role " + name)
}

// scopeChoices are the scope sets an edit may give a role; an edit never
// gives back a set the role's incarnation already had (I1 treats an edit
// as retiring the previous definition for good).
func scopeChoices(name string) []string {
	if name == roleUsers {
		return []string{"connect:recommendations", "connect:recommendations,connect:post_checkout", "connect:post_checkout"}
	}
	cc := []string{"connect:fulfillment", "connect:data_ingestion", "connect:compliance", "connect:ian", "Connect::Orders::RatingService"}
	var out []string
	for mask := 1; mask < 1<<len(cc); mask++ {
		var s []string
		for i, sc := range cc {
			if mask&(1<<i) != 0 {
				s = append(s, sc)
			}
		}
		out = append(out, strings.Join(s, ","))
	}
	return out
}

// ---------------------------------------------------------------- leases

// lease is Vault's record of a secret a creds read returned.
type lease struct {
	id        string
	role      string
	token     string
	exclusive bool
	secret    *logical.Secret // as Vault stored it (internal data round-tripped through JSON)
	issue     time.Time
	expire    time.Time
	maxExpire time.Time // zero: none
	revoked   bool
	revoking  bool // a revocation is queued or running
	by        string
	// revokeFails counts Vault's failed attempts to revoke the lease;
	// irrevocable: Vault gave up (maxVaultRevokeAttempts), as its
	// expiration manager marks such a lease and never tries it again.
	revokeFails int
	irrevocable bool
}

func (l *lease) live(now time.Time) bool {
	return !l.revoked && !l.revoking && now.Before(l.expire)
}

// ---------------------------------------------------------------- world

type world struct {
	seed      uint64
	rng       *rand.Rand
	steps     int
	faultRate float64
	mintSlots int // config max_concurrent_mints
	// calm seeds (one in three) have few faults, rare churn of config and
	// roles and hosts that rarely go down: long chains of ordinary traffic
	// (a refresh, a queue of mints) get to play out.
	calm bool

	sched *scheduler
	clock *fakeClock
	hosts []*host
	inner *logical.InmemStorage
	inv   *invariants
	logs  *syncBuffer
	sys   *logical.StaticSystemView

	gen      int
	b        *backend
	backends []*backend
	stores   map[int]*parkingStorage

	step     int
	stepNow  atomic.Int64 // step, for goroutines of the backend
	ops      []*opRun
	inflight []*opRun
	leases   []*lease
	vaultQ   []*lease // revocations Vault has to run (expiry, or a retry)

	configOps int // config ops in flight (they are serialised)
	roleBusy  map[string]bool
	usedScope map[string]map[string]bool // role -> scope sets its incarnation had
	genTick   map[int]int                // generation -> tick it was created at
	tick      int
	hostFlips []hostFlip
	secretSeq int

	drainMode bool
	trace     []string

	// The storage nemesis. storageFaultRate: the odds that a storage call
	// fails (a write landing all the same one time in three);
	// writesFailing: every write fails (a full disk, a lost quorum);
	// storageSlow: what each storage call costs on the fake clock.
	storageFaultRate float64
	writesFailing    bool
	storageSlow      time.Duration
	// cleanedInOutage: generations cleaned up while storage refused writes
	// (their in-memory tokens could be neither queued nor kept).
	cleanedInOutage map[int]bool
	// failOnce, when set, fails the next storage call it matches.
	failOnce func(pc *parkedCall) bool
	// storageFaultTicks are the ticks at which storage calls failed.
	storageFaultTicks []int
	// fills counts queue pre-fills; prefilled holds their keys (they name
	// no token the transport saw).
	fills     int
	prefilled map[string]bool

	// curGen and tickNow mirror gen and tick for the backend's goroutines.
	curGen, tickNow atomic.Int64
}

type hostFlip struct {
	step int
	host string
	down bool
}

const (
	maxInflight   = 4                // operations in flight before the scheduler starts another (a burst may exceed it)
	opDeadline    = 90 * time.Second // Vault's default max_request_duration
	vaultRetryAge = 60 * time.Second // the Vault API client's timeout: no retry of an answer later than this
	tokenLifetime = 2 * time.Hour
	// maxVaultRevokeAttempts and vaultRevokeRetryBase are Vault's
	// expiration manager's (vault/expiration.go: maxRevokeAttempts,
	// revokeRetryBase; the backoff doubles from twice the base).
	maxVaultRevokeAttempts = 6
	vaultRevokeRetryBase   = 10 * time.Second
	clientIDHostA          = "explore-client-a"
	clientIDHostB          = "explore-client-b"
)

func newWorld(seed uint64, steps int) *world {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &world{
		seed:            seed,
		rng:             rng,
		steps:           steps,
		faultRate:       []float64{0.1, 0.25, 0.4, 0.6}[rng.IntN(4)],
		mintSlots:       1 + rng.IntN(2),
		calm:            rng.IntN(3) == 0,
		sched:           newScheduler(),
		clock:           &fakeClock{},
		inner:           &logical.InmemStorage{},
		logs:            &syncBuffer{},
		sys:             logical.TestSystemView(),
		stores:          map[int]*parkingStorage{},
		cleanedInOutage: map[int]bool{},
		roleBusy:        map[string]bool{},
		usedScope:       map[string]map[string]bool{},
		genTick:         map[int]int{},
		prefilled:       map[string]bool{},
	}
	if !w.calm {
		w.storageFaultRate = []float64{0, 0, 0.01, 0.03, 0.06}[rng.IntN(5)]
	}
	w.clock.nanos.Store(exploreEpoch.UnixNano())
	w.inv = newInvariants(w)
	for _, spec := range []struct{ name, base, id string }{
		{"A", "http://127.0.0.1:18001", clientIDHostA},
		{"B", "http://127.0.0.2:18002", clientIDHostB},
	} {
		fake := connectfake.New()
		fake.SetTokenLifetime(tokenLifetime)
		h := &host{name: spec.name, baseURL: spec.base, hostport: strings.TrimPrefix(spec.base, "http://"), clientID: spec.id,
			fake: fake, handler: fake.Handler(), secrets: map[string]bool{}}
		w.hosts = append(w.hosts, h)
	}
	return w
}

func (w *world) hostByAddr(addr string) *host {
	for _, h := range w.hosts {
		if h.hostport == addr {
			return h
		}
	}
	return nil
}

func (w *world) hostByName(name string) *host {
	for _, h := range w.hosts {
		if h.name == name {
			return h
		}
	}
	return nil
}

func (w *world) hostByBaseURL(u string) *host {
	for _, h := range w.hosts {
		if h.baseURL == u {
			return h
		}
	}
	return nil
}

// connectHook is the backend's hooks.connectConfig: the in-process transport
// and waits that cost no real time.
func (w *world) connectHook(gen int) func(*connect.Config) {
	return func(c *connect.Config) {
		c.Transport = &connectTransport{w: w, gen: gen, attemptTimeout: c.RequestTimeout}
		// The transport times attempts out on the fake clock; the real
		// clock's timeout must never fire.
		c.RequestTimeout = time.Hour
		c.RetryWaitMin, c.RetryWaitMax = time.Nanosecond, time.Nanosecond
		// Backoffs cost nothing; a 429's pause (connect.Throttle) is a
		// timer on the fake clock: the token requests it holds back wait
		// until the scheduler moves the clock past it, or their context ends.
		c.Sleep = func(ctx context.Context, d time.Duration) error {
			return w.sched.sleep(ctx, gen, w.clock.now(), d)
		}
	}
}

// newBackend builds generation gen of the backend over the shared storage.
func (w *world) newBackend() *backend {
	w.gen++
	conf := logical.TestBackendConfig()
	conf.StorageView = w.storage(w.gen)
	conf.System = w.sys
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: w.logs, Level: hclog.Warn})
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		panic(err)
	}
	b := lb.(*backend)
	b.now = w.clock.now
	b.hooks = &testHooks{connectConfig: w.connectHook(w.gen)}
	gen := w.gen
	// Waits (a 429's Retry-After before the verify token's revocation is
	// tried again) pass on the world's clock.
	b.sleep = func(ctx context.Context, d time.Duration) error { return w.sched.sleep(ctx, gen, w.clock.now(), d) }
	// Tidy's pace times batches on the world's clock, which a batch never
	// moves: it never waits, and holds no lifecycle decision
	// (tidy_pace_test.go holds it).
	b.tidyPace = newTidyPacer(w.clock.now, b.sleep)
	w.b = b
	w.backends = append(w.backends, b)
	w.genTick[w.gen] = w.tick
	w.curGen.Store(int64(w.gen))
	return b
}

func (w *world) storage(gen int) *parkingStorage {
	s, ok := w.stores[gen]
	if !ok {
		s = &parkingStorage{w: w, gen: gen, inner: w.inner}
		w.stores[gen] = s
	}
	return s
}

func (w *world) newSecret(h *host) string {
	w.secretSeq++
	// A throwaway placeholder, still never printed.
	return fmt.Sprintf("explore-secret-%s-%d-%016x", h.name, w.secretSeq, w.rng.Uint64())
}

// configData is a full config write for host h with a new secret.
func (w *world) configData(h *host, secret string, verify bool) map[string]any {
	return map[string]any{
		"client_id":            h.clientID,
		"client_secret":        secret,
		"base_url":             h.baseURL,
		"request_timeout":      10, // on the fake clock (the transport times attempts out)
		"max_retries":          2,
		"max_concurrent_mints": w.mintSlots,
		"verify":               verify,
	}
}

// ---------------------------------------------------------------- raw views

// rawConfig is the stored config, read without parking.
func (w *world) rawConfig() *connectConfig {
	cfg, _ := getJSON[connectConfig](context.Background(), w.inner, configStoragePath)
	return cfg
}

func (w *world) rawRole(name string) *role {
	r, _ := getJSON[role](context.Background(), w.inner, roleStoragePrefix+name)
	if r != nil {
		r.computeHash()
	}
	return r
}

func (w *world) rawToken(key string) *issuedToken {
	t, _ := getJSON[issuedToken](context.Background(), w.inner, key)
	return t
}

func (w *world) rawKeys(prefix string) []string {
	var out []string
	var walk func(p string)
	walk = func(p string) {
		keys, _ := w.inner.List(context.Background(), p)
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(p + k)
			} else {
				out = append(out, p+k)
			}
		}
	}
	walk(prefix)
	return out
}

// queueKeys are the revocation queue's entries, every role's, at any depth
// (revoking/<role>/<id>, or revoking/<role>/<shard>/<id>); entries set
// aside as undecodable (revoking/@aside/...) are not in the queue.
func (w *world) queueKeys() []string {
	var out []string
	for _, k := range w.rawKeys(revokingStoragePrefix) {
		if !strings.HasPrefix(k, asideStoragePrefix) {
			out = append(out, k)
		}
	}
	return out
}

// isQueueEntryKey reports whether key is an entry of a role's queue (not a
// folder of it).
func isQueueEntryKey(key string) bool {
	return strings.HasPrefix(key, revokingStoragePrefix) && strings.Count(key, "/") >= 2 && !strings.HasSuffix(key, "/")
}

// queueRole is the role whose queue holds key (revoking/<role>/...).
func queueRole(key string) string {
	rest := strings.TrimPrefix(key, revokingStoragePrefix)
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

// rawStoredTokens returns the access tokens stored under prefixes.
func (w *world) rawStoredTokens(prefixes ...string) map[string]bool {
	out := map[string]bool{}
	for _, prefix := range prefixes {
		for _, k := range w.rawKeys(prefix) {
			if t := w.rawToken(k); t != nil {
				out[t.AccessToken] = true
			}
		}
	}
	return out
}

// rawRoleTokens returns the access tokens stored for role, per-user ones included.
func (w *world) rawRoleTokens(role string) map[string]bool {
	return w.rawStoredTokens(roleTokenPrefix(role), userTokenPrefix(role))
}

// storedTokenNames are the explorer's token names any stored value holds.
func (w *world) storedTokenNames() map[string]bool {
	out := map[string]bool{}
	for _, k := range w.rawKeys("") {
		if e, _ := w.inner.Get(context.Background(), k); e != nil {
			for _, t := range tokenLike.FindAll(e.Value, -1) {
				out[string(t)] = true
			}
		}
	}
	return out
}

// ---------------------------------------------------------------- requests

// request sends one request to the op's backend as Vault would: create or
// update chosen by the path's existence check.
func (w *world) request(o *opRun, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	req := &logical.Request{Operation: op, Path: path, Data: data, Storage: o.store}
	if op == logical.CreateOperation || op == logical.UpdateOperation {
		if ok, exists, err := o.b.HandleExistenceCheck(o.ctx, req); err == nil && ok {
			req.Operation = logical.UpdateOperation
			if !exists {
				req.Operation = logical.CreateOperation
			}
		}
	}
	return o.b.HandleRequest(o.ctx, req)
}

// startOp runs fn on its own goroutine as operation o.
func (w *world) startOp(o *opRun, fn func(o *opRun)) {
	w.ops = append(w.ops, o)
	o.id = len(w.ops)
	o.name = "op" + itoa(o.id)
	o.startStep, o.startTick = w.step, w.tick
	o.startAt = w.clock.now()
	o.deadline = o.startAt.Add(opDeadline)
	if o.b == nil {
		o.b, o.gen = w.b, w.gen
	}
	o.store = w.storage(o.gen)
	ctx, cancel := context.WithCancel(context.Background())
	o.ctx, o.cancel = withOp(ctx, o), cancel
	w.inflight = append(w.inflight, o)
	w.logf("start %s %s", o.name, o.desc)
	w.sched.events.Add(1)
	go func() {
		defer func() {
			w.inv.answered(o)
			o.done.Store(true)
			w.sched.events.Add(1)
		}()
		fn(o)
	}()
	// Run it until it parks, blocks or ends before anything else happens:
	// operations started in one decision (a burst, the drain) would
	// otherwise race each other to the locks and semaphores they share.
	w.sched.settle()
}

// ---------------------------------------------------------------- choosing

func (w *world) logf(format string, args ...any) {
	line := fmt.Sprintf("step %3d  %s  ", w.step, w.clock.now().Sub(exploreEpoch).Truncate(time.Second)) + fmt.Sprintf(format, args...)
	w.trace = append(w.trace, line)
}

func pick[T any](w *world, xs []T) T { return xs[w.rng.IntN(len(xs))] }

// act makes one scheduling decision.
func (w *world) act() {
	parked := w.sched.parkedSorted()
	canStart := len(w.inflight) < maxInflight
	type choice struct {
		weight float64
		do     func()
	}
	var choices []choice
	if len(parked) > 0 {
		choices = append(choices, choice{6, func() { w.releaseOne(parked) }})
	}
	if canStart {
		choices = append(choices, choice{3, w.startSomething})
	}
	choices = append(choices, choice{1.2, w.worldEvent})
	total := 0.0
	for _, c := range choices {
		total += c.weight
	}
	x := w.rng.Float64() * total
	for _, c := range choices {
		if x -= c.weight; x < 0 {
			c.do()
			return
		}
	}
	choices[len(choices)-1].do()
}

// releaseOne releases one parked call, chosen by the RNG among the calls
// sorted by label.
func (w *world) releaseOne(parked []*parkedCall) {
	w.releaseCall(parked[w.rng.IntN(len(parked))])
}

// releaseCall releases pc: a Connect call with the fault the RNG picks now,
// a storage call as releaseStorage does.
func (w *world) releaseCall(pc *parkedCall) {
	if pc.kind == "storage" {
		w.releaseStorage(pc, "")
		return
	}
	v := verdict{fault: w.chooseFault(pc)}
	if v.fault == faultCallerLeaves {
		o := pc.op
		o.disconnected = true
		v.leave = o.cancel
	}
	if v.fault != faultNone {
		w.logf("release %s [%s]", pc.label, v.fault)
	} else {
		w.logf("release %s", pc.label)
	}
	w.sched.release(pc, v)
}

// Storage faults as the engine sees them: plain errors, as Vault's gRPC
// storage hands them to a plugin.
var (
	errStorageInjected = errors.New("rpc error: code = Unavailable desc = explore: storage unavailable (injected)")
	errStorageLanded   = errors.New("rpc error: code = Unavailable desc = explore: no answer from storage (injected; the write landed)")
	errStorageWrites   = errors.New("rpc error: code = Unavailable desc = explore: storage refuses writes (injected)")
)

// storageVerdict is what a released storage call is told: nothing in the
// drain; else a one-shot fault armed for it, the write outage, or the
// seed's fault rate.
func (w *world) storageVerdict(pc *parkedCall) verdict {
	if w.drainMode || (pc.op != nil && pc.op.faultless) {
		return verdict{}
	}
	write := pc.what == "put" || pc.what == "delete"
	var v verdict
	switch {
	case w.failOnce != nil && w.failOnce(pc):
		w.failOnce = nil
		v.storageErr = errStorageInjected
	case w.writesFailing && write:
		v.storageErr = errStorageWrites
	case w.storageFaultRate > 0 && w.rng.Float64() < w.storageFaultRate:
		v.storageErr = errStorageInjected
		if write && w.rng.IntN(3) == 0 {
			v.storageErr, v.landed = errStorageLanded, true
		}
	}
	if v.storageErr != nil {
		w.storageFaultTicks = append(w.storageFaultTicks, w.tick)
	}
	return v
}

// storageFailedDuring reports whether a storage call failed by the
// nemesis's hand between ticks from and to.
func (w *world) storageFailedDuring(from, to int) bool {
	i := sort.SearchInts(w.storageFaultTicks, from)
	return i < len(w.storageFaultTicks) && w.storageFaultTicks[i] <= to
}

// maxBurst bounds the storage calls under revoking/ released in one decision.
const maxBurst = 512

// releaseStorage releases a storage call with its verdict, after the fake
// clock has moved by what the call costs (storageSlow). A call under
// revoking/ is released half of the time in a burst: the next calls of the
// same goroutine under revoking/ (a pass walking a long queue) follow,
// each with its own verdict, without a decision in between, so a queue of
// thousands costs dozens of decisions, not thousands.
func (w *world) releaseStorage(pc *parkedCall, note string) {
	burst := 1
	if isQueueEntryKey(pc.key) && (pc.what == "get" || pc.what == "delete") && w.rng.IntN(2) == 0 {
		burst = 2 + w.rng.IntN(maxBurst-1)
	}
	first, who, what := pc.label, pc.who, pc.what
	n, faults := 0, 0
	for pc != nil {
		if w.storageSlow > 0 {
			w.passTime(w.storageSlow)
		}
		v := w.storageVerdict(pc)
		switch {
		case n == 0 && v.storageErr != nil:
			w.logf("release %s%s [%s]", pc.label, note, v.storageErr)
		case n == 0:
			w.logf("release %s%s", pc.label, note)
		case v.storageErr != nil:
			faults++
			w.logf("  … %s [%s] (in the burst)", pc.label, v.storageErr)
		}
		ev := w.sched.events.Load()
		mark := w.sched.lastSeq()
		w.sched.release(pc, v)
		if n++; n >= burst {
			break
		}
		pc = w.sched.nextPark(who, what, revokingStoragePrefix, mark, ev+1)
	}
	if n > 1 {
		w.logf("  … %d calls of %s released in one burst (%d failed)", n, first, faults)
	}
}

func (w *world) chooseFault(pc *parkedCall) faultKind {
	h := w.hostByName(pc.host)
	if h == nil || h.down {
		return faultRefused
	}
	if w.drainMode || (pc.op != nil && pc.op.faultless) {
		return faultNone
	}
	rate := w.faultRate
	if w.calm {
		rate = 0.03
	}
	if w.rng.Float64() >= rate {
		return faultNone
	}
	total := 0
	for _, fw := range faultWeights {
		if fw.f.appliesTo(pc) {
			total += fw.w
		}
	}
	x := w.rng.IntN(total)
	for _, fw := range faultWeights {
		if !fw.f.appliesTo(pc) {
			continue
		}
		if x -= fw.w; x < 0 {
			return fw.f
		}
	}
	return fault503
}

// startSomething starts one operation: Vault's own revocation work first
// half of the time, else one of the mix.
func (w *world) startSomething() {
	if len(w.vaultQ) > 0 && w.rng.IntN(2) == 0 {
		l := w.vaultQ[0]
		w.vaultQ = w.vaultQ[1:]
		w.startVaultRevoke(l)
		return
	}
	var kinds []opKind
	var weights []int
	total := 0
	for k := opKind(0); k < numOpKinds; k++ {
		wt := opWeights[k]
		if k == opPeriodicHostDown {
			if at := w.inv.pendingHosts(); at["A"] == 0 || at["B"] == 0 {
				wt = 0
				if w.rng.IntN(10) == 0 {
					wt = opWeights[k]
				}
			}
		}
		if w.calm {
			switch k {
			case opConfigRotate, opConfigMove, opConfigDelete, opRoleEdit, opRoleDelete, opRestart, opUpgrade, opRotateDuringMint, opOutage,
				opConfigVerifyLeaves, opRevokeWritesFailing:
				wt = 0
			}
		}
		if wt > 0 && w.applies(k) {
			kinds = append(kinds, k)
			weights = append(weights, wt)
			total += wt
		}
	}
	if total == 0 {
		return
	}
	x := w.rng.IntN(total)
	for i, k := range kinds {
		if x -= weights[i]; x < 0 {
			w.startKind(k)
			return
		}
	}
}

func (w *world) liveLeases() []*lease {
	now := w.clock.now()
	var out []*lease
	for _, l := range w.leases {
		if l.live(now) {
			out = append(out, l)
		}
	}
	return out
}

func (w *world) missingRoles() []string {
	var out []string
	for _, r := range editableRoles {
		if w.rawRole(r) == nil && !w.roleBusy[r] {
			out = append(out, r)
		}
	}
	return out
}

func (w *world) presentEditable() []string {
	var out []string
	for _, r := range editableRoles {
		if w.rawRole(r) != nil && !w.roleBusy[r] {
			out = append(out, r)
		}
	}
	return out
}

func (w *world) applies(k opKind) bool {
	configured := w.rawConfig().configured()
	switch k {
	case opRevokeLease, opRenewLease:
		return len(w.liveLeases()) > 0
	case opConfigRotate, opConfigMove, opConfigDelete:
		return configured && w.configOps == 0
	case opRotateDuringMint:
		return configured && w.configOps == 0 && w.sharedMintAtConnect() != nil
	case opOutage:
		return configured && w.configOps == 0
	case opConfigCreate:
		return !configured && w.configOps == 0
	case opRoleEdit, opRoleDelete:
		return len(w.presentEditable()) > 0
	case opRoleCreate:
		return len(w.missingRoles()) > 0
	case opRestart:
		return w.step > 3
	case opConfigVerifyLeaves:
		return w.configOps == 0
	case opRevokeWritesFailing:
		return len(w.liveExclusiveLeases()) > 0
	case opUpgrade:
		// v0.1.0 stops before this release starts: nothing in flight.
		return w.step > 3 && len(w.inflight) == 0 && len(w.rawKeys(userTokenStoragePrefix)) > 0
	}
	return true
}

// worldEvent moves the clock, takes a host down or up, has a client go
// away, or changes storage (a queue pre-filled, a slow phase, a write outage).
func (w *world) worldEvent() {
	if w.rng.IntN(10) == 0 {
		w.storageEvent()
		return
	}
	switch x := w.rng.IntN(100); {
	case x < 60:
		w.advanceClock()
	case x < 88:
		h := pick(w, w.hosts)
		if w.calm && !h.down && w.rng.IntN(4) != 0 {
			w.advanceClock()
			return
		}
		w.setHostDown(h, !h.down)
	default:
		if len(w.inflight) == 0 {
			w.advanceClock()
			return
		}
		o := pick(w, w.inflight)
		if o.kind == opRestart {
			w.advanceClock()
			return
		}
		o.disconnected = true
		w.logf("client of %s goes away (request cancelled)", o.name)
		o.cancel()
		w.sched.events.Add(1)
	}
}

func (w *world) setHostDown(h *host, down bool) {
	if h.down == down {
		return
	}
	h.down = down
	w.hostFlips = append(w.hostFlips, hostFlip{w.step, h.name, down})
	if down {
		w.logf("host %s goes down", h.name)
	} else {
		w.logf("host %s is back", h.name)
	}
}

// advanceClock moves the clock: a little, a lot, or to just before or after
// an instant where something changes (a token stops being fresh, a token or
// a lease expires).
func (w *world) advanceClock() {
	now := w.clock.now()
	var d time.Duration
	switch x := w.rng.IntN(100); {
	case x < 35:
		d = time.Duration(1+w.rng.IntN(85)) * time.Second
	case x < 55:
		d = time.Duration(2+w.rng.IntN(14)) * time.Minute
	case x < 70:
		d = time.Duration(20+w.rng.IntN(50)) * time.Minute
	default:
		var instants []time.Time
		for _, k := range append(w.rawKeys(tokenStoragePrefix), w.rawKeys(userTokenStoragePrefix)...) {
			if t := w.rawToken(k); t != nil {
				instants = append(instants, t.ExpiresAt, t.ExpiresAt.Add(-time.Hour))
			}
		}
		for _, l := range w.liveLeases() {
			instants = append(instants, l.expire)
		}
		var future []time.Time
		for _, at := range instants {
			if at.After(now.Add(5 * time.Second)) {
				future = append(future, at)
			}
		}
		if len(future) == 0 {
			d = time.Duration(1+w.rng.IntN(85)) * time.Second
			break
		}
		at := pick(w, future).Add(time.Duration(w.rng.IntN(70)-60)*time.Second - 500*time.Millisecond)
		if !at.After(now) {
			at = now.Add(time.Second)
		}
		d = at.Sub(now)
	}
	w.logf("clock +%s", d)
	w.advanceTo(now.Add(d))
}

// advanceTo moves the clock to target as a discrete-event simulation: it
// stops at every timer that falls due on the way, in time order (an attempt
// of a parked Connect call timing out, a 429's pause ending, a request's
// deadline), fires it and lets the world settle, so a retry after a timeout
// happens before a deadline that comes later.
//
// Before the clock moves, every parked storage call is released, in seeded
// order, until only Connect calls and timers are parked: storage costs the
// fake clock only what storageSlow says (0 but in slow phases), so a
// deadline passes, or an attempt times out, while Connect is being waited
// for, or while slow storage is.
func (w *world) advanceTo(target time.Time) {
	for range 10000 {
		w.finishStorage()
		if !w.fireNextDue(target) {
			break
		}
	}
	if target.After(w.clock.now()) {
		w.clock.set(target)
	}
	w.afterClockMove()
}

// passTime moves the clock by d while a storage call is in progress: what
// falls due on the way fires, in time order; nothing else is released.
func (w *world) passTime(d time.Duration) {
	target := w.clock.now().Add(d)
	for range 10000 {
		if !w.fireNextDue(target) {
			break
		}
	}
	if target.After(w.clock.now()) {
		w.clock.set(target)
	}
	w.afterClockMove()
}

// fireNextDue fires the earliest of what falls due by target (a Connect
// attempt's timeout, a timer, a request's deadline), the clock set to it;
// false when nothing does.
func (w *world) fireNextDue(target time.Time) bool {
	var next time.Time
	var call *parkedCall
	var op *opRun
	for _, pc := range append(w.sched.parkedSorted(), w.sched.timers()...) {
		if !pc.deadline.IsZero() && !pc.deadline.After(target) && (next.IsZero() || pc.deadline.Before(next)) {
			next, call, op = pc.deadline, pc, nil
		}
	}
	for _, o := range w.inflight {
		if !o.deadlineHit && o.kind != opRestart && !o.deadline.After(target) && (next.IsZero() || o.deadline.Before(next)) {
			next, call, op = o.deadline, nil, o
		}
	}
	if next.IsZero() {
		return false
	}
	if next.After(w.clock.now()) {
		w.clock.set(next)
	}
	switch {
	case call != nil && call.kind == "timer":
		w.logf("%s is over", call.label)
		w.sched.release(call, verdict{})
	case call != nil:
		v := verdict{fault: faultTimeoutUnhandled}
		if h := w.hostByName(call.host); h == nil || h.down {
			v.fault = faultRefused
		} else if w.rng.IntN(10) < 3 {
			v.fault = faultTimeoutAfterHandling
		}
		w.logf("request_timeout of %s passes [%s]", call.label, v.fault)
		w.sched.release(call, v)
	default:
		op.deadlineHit = true
		w.logf("deadline of %s passes (request cancelled)", op.name)
		op.cancel()
	}
	w.sched.settle()
	w.processCompletions()
	return true
}

// finishStorage releases the calls that take no decision of their own,
// storage calls and Connect calls to a host that is down (a refused
// connection is immediate), the RNG picking which among them sorted by
// label, until none is parked.
func (w *world) finishStorage() {
	for range 20000 {
		var instant []*parkedCall
		for _, pc := range w.sched.parkedSorted() {
			if pc.kind == "storage" {
				instant = append(instant, pc)
			} else if h := w.hostByName(pc.host); h == nil || h.down {
				instant = append(instant, pc)
			}
		}
		if len(instant) == 0 {
			return
		}
		pc := instant[w.rng.IntN(len(instant))]
		if pc.kind == "connect" {
			w.logf("release %s [refused] (before the clock moves)", pc.label)
			w.sched.release(pc, verdict{fault: faultRefused})
		} else {
			w.releaseStorage(pc, " (before the clock moves)")
		}
		w.sched.settle()
		w.processCompletions()
	}
}

// afterClockMove: deadlines of requests in flight pass, and Vault revokes
// the leases that expired.
func (w *world) afterClockMove() {
	now := w.clock.now()
	for _, o := range w.inflight {
		if !o.deadlineHit && o.kind != opRestart && !now.Before(o.deadline) {
			o.deadlineHit = true
			w.logf("deadline of %s passes (request cancelled)", o.name)
			o.cancel()
			w.sched.settle()
		}
	}
	for _, l := range w.leases {
		if !l.revoked && !l.revoking && !now.Before(l.expire) {
			l.revoking = true
			w.vaultQ = append(w.vaultQ, l)
			w.logf("lease %s expires: Vault revokes it", l.id)
		}
	}
	w.sched.events.Add(1)
}

// ---------------------------------------------------------------- op bodies

func (w *world) startKind(k opKind) {
	switch k {
	case opReadShared:
		r := pick(w, []string{roleCC, roleCC2})
		w.startCreds(&opRun{kind: k, role: r, desc: "read creds/" + r})
	case opReadUser:
		u := pick(w, exploreUsers)
		w.startCreds(&opRun{kind: k, role: roleUsers, user: u, desc: "write creds/users user_id=" + u})
	case opUserBurst, opNoisyNeighbour:
		n := 4 + w.rng.IntN(5)
		for _, i := range w.rng.Perm(len(exploreUsers))[:n] {
			u := exploreUsers[i]
			w.startCreds(&opRun{kind: opReadUser, role: roleUsers, user: u, desc: "write creds/users user_id=" + u + " (burst)"})
		}
		if k == opNoisyNeighbour {
			// The burst's mints queue for slots first (their storage reads
			// done), as a stream of first-time shoppers would; then the
			// quiet role's read arrives behind them.
			w.sched.settle()
			w.finishStorage()
			// The quiet role: one whose token is due for a refresh but
			// still good for a while, when there is one.
			quiet := []string{roleCC, roleCC2}
			var due []string
			for _, r := range quiet {
				if t := w.rawToken(tokenKey(r, "")); t != nil && t.leasable(w.clock.now()) && !t.fresh(w.clock.now(), defaultMinRemainingTTL) {
					due = append(due, r)
				}
			}
			if len(due) > 0 {
				quiet = due
			}
			r := pick(w, quiet)
			w.startCreds(&opRun{kind: opReadShared, role: r, desc: "read creds/" + r + " (behind the burst)"})
		}
	case opReadExclusive:
		w.startCreds(&opRun{kind: k, role: roleExcl, desc: "read creds/excl"})
	case opReadCode:
		// Instacart hands the retailer a code for the application the mount
		// is configured with now.
		h, clientID := w.hosts[0], clientIDHostA
		if cfg := w.rawConfig(); cfg.configured() {
			if hh := w.hostByBaseURL(cfg.BaseURL); hh != nil {
				h, clientID = hh, cfg.ClientID
			}
		}
		code, name := w.inv.newCode(h.fake.IssueAuthorizationCode(clientID, exploreRedirect, "linked-user"))
		w.startCreds(&opRun{kind: k, role: roleLink, code: code, desc: "write creds/link code=<code " + name + " from " + h.name + ">"})
	case opRevokeLease:
		l := pick(w, w.liveLeases())
		l.revoking = true
		w.startRevoke(&opRun{kind: k, lease: l, desc: "lease revoke " + l.id + " (the client)"})
	case opRenewLease:
		l := pick(w, w.liveLeases())
		inc := time.Duration(w.rng.IntN(7200)) * time.Second
		o := &opRun{kind: k, lease: l, desc: fmt.Sprintf("lease renew %s increment=%s", l.id, inc)}
		w.startOp(o, func(o *opRun) {
			s := *l.secret
			s.IssueTime, s.Increment, s.LeaseID = l.issue, inc, l.id
			resp, err := o.b.HandleRequest(o.ctx, &logical.Request{Operation: logical.RenewOperation, Secret: &s, Storage: o.store})
			o.answers = append(o.answers, opAnswer{resp, err})
		})
	case opFlush, opFlushHostDown:
		r := pick(w, sharedRoles)
		if k == opFlushHostDown {
			if cfg := w.rawConfig(); cfg.configured() {
				if h := w.hostByBaseURL(cfg.BaseURL); h != nil {
					w.setHostDown(h, true)
				}
			}
		}
		w.startFlush(k, r)
	case opOutage:
		// Revocations pending at both hosts, then a periodic pass with
		// one of them down (I6b): a role's token minted at the current
		// host, flushed while it is down; the config moves to the other
		// host; another role's token minted there, flushed while that
		// one is down. Each operation runs ahead of the others, its
		// faults still the RNG's.
		cfg := w.rawConfig()
		h1 := w.hostByBaseURL(cfg.BaseURL)
		h2 := w.otherHost(h1)
		perm := w.rng.Perm(len(sharedRoles))
		ra, rb := sharedRoles[perm[0]], sharedRoles[perm[1]]
		w.setHostDown(h1, false)
		w.setHostDown(h2, false)
		w.startCreds(w.sharedRead(ra, " (outage)"))
		w.runOwnCalls(w.ops[len(w.ops)-1])
		w.setHostDown(h1, true)
		w.runOwnCalls(w.startFlush(opFlushHostDown, ra))
		w.startKind(opConfigMove)
		w.runOwnCalls(w.ops[len(w.ops)-1])
		w.startCreds(w.sharedRead(rb, " (outage)"))
		w.runOwnCalls(w.ops[len(w.ops)-1])
		w.setHostDown(h2, true)
		w.runOwnCalls(w.startFlush(opFlushHostDown, rb))
		w.startKind(opPeriodicHostDown)
	case opRotateDuringMint:
		// The rotation runs to completion while the read's mint with the
		// old credentials is still at Connect; then a read of the same
		// role mints with the new ones. Which mint is stored last is left
		// to the scheduler.
		reader := w.sharedMintAtConnect()
		move := w.rng.IntN(2) == 0
		kind := opConfigRotate
		if move {
			kind = opConfigMove
		}
		w.startKind(kind)
		w.runOwnCalls(w.ops[len(w.ops)-1])
		r := reader.role
		if reader.user != "" {
			w.startCreds(&opRun{kind: opReadUser, role: r, user: reader.user, desc: "write creds/users user_id=" + reader.user + " (after the rotation)"})
		} else {
			w.startCreds(&opRun{kind: opReadShared, role: r, desc: "read creds/" + r + " (after the rotation)"})
		}
	case opConfigRotate, opConfigMove, opConfigCreate:
		cfg := w.rawConfig()
		h := w.hosts[0]
		if cfg.configured() {
			h = w.hostByBaseURL(cfg.BaseURL)
			if k == opConfigMove {
				h = w.otherHost(h)
			}
		} else {
			h = pick(w, w.hosts)
		}
		secret := w.newSecret(h)
		h.addSecret(secret)
		w.inv.writeSecret(secret, h.name, h.clientID)
		verify := w.rng.IntN(3) == 0
		what := map[opKind]string{opConfigRotate: "rotate", opConfigMove: "move to " + h.name, opConfigCreate: "create at " + h.name}[k]
		o := &opRun{kind: k, secret: secret, desc: fmt.Sprintf("write config (%s, new secret, verify=%v)", what, verify)}
		o.oldSnap = w.inv.allSharedSnapshot()
		w.configOps++
		w.startSimple(o, logical.UpdateOperation, "config", w.configData(h, secret, verify))
	case opConfigDelete:
		o := &opRun{kind: k, desc: "delete config"}
		o.oldSnap = w.inv.allSharedSnapshot()
		w.configOps++
		w.startSimple(o, logical.DeleteOperation, "config", nil)
	case opRoleEdit:
		r := pick(w, w.presentEditable())
		used := w.usedScope[r]
		if used == nil {
			used = map[string]bool{}
			w.usedScope[r] = used
		}
		if cur := w.rawRole(r); cur != nil {
			used[strings.Join(cur.Scopes, ",")] = true
		}
		var fresh []string
		for _, s := range scopeChoices(r) {
			if !used[s] {
				fresh = append(fresh, s)
			}
		}
		if len(fresh) == 0 {
			w.startRoleDelete(r)
			return
		}
		scopes := pick(w, fresh)
		used[scopes] = true
		o := &opRun{kind: k, role: r, desc: "write roles/" + r + " scopes=" + scopes}
		o.oldSnap = w.inv.roleSnapshot(r)
		w.roleBusy[r] = true
		w.startSimple(o, logical.UpdateOperation, "roles/"+r, map[string]any{"scopes": scopes})
	case opRoleDelete:
		w.startRoleDelete(pick(w, w.presentEditable()))
	case opRoleCreate:
		r := pick(w, w.missingRoles())
		delete(w.usedScope, r)
		o := &opRun{kind: k, role: r, desc: "write roles/" + r + " (create)"}
		w.roleBusy[r] = true
		w.startSimple(o, logical.UpdateOperation, "roles/"+r, roleDefinition(r))
	case opTidy:
		w.startSimple(&opRun{kind: k, desc: "write tidy"}, logical.UpdateOperation, "tidy", nil)
	case opPeriodic:
		w.startRollback(&opRun{kind: k, desc: "periodic (Vault's rollback timer)"}, false)
	case opPeriodicHostDown:
		// I6(b): one host down, the other answering without faults. Its
		// odds are the scenario's weight when revocations are pending at
		// both hosts, a tenth of it otherwise.
		x := w.hostForI6b()
		w.setHostDown(x, true)
		if y := w.otherHost(x); y.down {
			w.setHostDown(y, false)
		}
		o := &opRun{kind: k, faultless: true, desc: "periodic with host " + x.name + " down"}
		o.i6b = w.inv.i6bStart(x.name, w.otherHost(x).name)
		w.startRollback(o, false)
		// The pass takes milliseconds (one host refuses at once, the other
		// answers): its own calls go first, in seeded order, with no clock
		// move in between. What it waits for behind other operations'
		// calls is left to the scheduler.
		w.runOwnCalls(o)
	case opQueueRace:
		w.startQueueRace()
	case opConfigVerifyLeaves:
		w.startConfigVerifyLeaves()
	case opRevokeWritesFailing:
		w.revokeWhileWritesFail(pick(w, w.liveExclusiveLeases()))
	case opRestart, opUpgrade:
		desc := "restart"
		if k == opUpgrade {
			desc = fmt.Sprintf("upgrade from v0.1.0 (%d per-user tokens at its keys)", w.toPreviousLayout())
		}
		old, oldGen := w.b, w.gen
		if w.writesFailing {
			w.cleanedInOutage[oldGen] = true
		}
		w.newBackend()
		o := &opRun{kind: k, b: old, gen: oldGen, desc: fmt.Sprintf("%s: generation %d takes over, generation %d is cleaned up", desc, w.gen, oldGen)}
		w.startOp(o, func(o *opRun) { o.b.Cleanup(o.ctx) })
	}
}

// toPreviousLayout rewrites, in raw storage, the per-user tokens as v0.1.0
// stored them: in the role's folder, live ones as user-<hash>. It returns
// how many it moved.
func (w *world) toPreviousLayout() int {
	ctx := context.Background()
	n := 0
	for _, key := range w.rawKeys(userTokenStoragePrefix) {
		role := tokenRole(key)
		base := key[strings.LastIndex(key, "/")+1:]
		to := roleTokenPrefix(role) + base
		if !strings.HasPrefix(base, supersededPrefix) {
			to = roleTokenPrefix(role) + legacyUserPrefix + base
		}
		e, _ := w.inner.Get(ctx, key)
		if e == nil {
			continue
		}
		e.Key = to
		if w.inner.Put(ctx, e) == nil && w.inner.Delete(ctx, key) == nil {
			n++
		}
	}
	return n
}

// runOwnCalls releases o's parked calls (the RNG picks among them, sorted
// by label, and their faults) until o ends or none of its calls is parked:
// o runs ahead of everything else without the clock moving.
func (w *world) runOwnCalls(o *opRun) {
	for range 500 {
		if o.done.Load() {
			break
		}
		var mine []*parkedCall
		for _, pc := range w.sched.parkedSorted() {
			if pc.op == o {
				mine = append(mine, pc)
			}
		}
		if len(mine) == 0 {
			break // blocked behind another operation: the scheduler decides
		}
		w.releaseOne(mine)
		w.sched.settle()
	}
	w.processCompletions()
}

// sharedMintAtConnect is a shared read whose mint is parked at Connect, if any.
func (w *world) sharedMintAtConnect() *opRun {
	for _, pc := range w.sched.parkedSorted() {
		if pc.kind == "connect" && pc.op != nil && (pc.op.kind == opReadShared || pc.op.kind == opReadUser) && strings.Contains(pc.label, " token ") {
			return pc.op
		}
	}
	return nil
}

func (w *world) otherHost(h *host) *host {
	if h == w.hosts[0] {
		return w.hosts[1]
	}
	return w.hosts[0]
}

// hostForI6b picks the host to take down: one whose pending revocations sit
// beside some of the other host's, when there are such, so the pass has
// something to prove.
func (w *world) hostForI6b() *host {
	at := w.inv.pendingHosts()
	if at["A"] > 0 && at["B"] > 0 {
		return pick(w, w.hosts)
	}
	if at["A"] > 0 {
		return w.hosts[1]
	}
	if at["B"] > 0 {
		return w.hosts[0]
	}
	return pick(w, w.hosts)
}

// startFlush starts a flush of role r: DELETE cache/r.
func (w *world) startFlush(k opKind, r string) *opRun {
	o := &opRun{kind: k, role: r, desc: "delete cache/" + r}
	o.flushSnap = w.inv.handedOutSnapshot(r)
	for t := range w.rawRoleTokens(r) {
		o.flushSnap[t] = true
	}
	w.startSimple(o, logical.DeleteOperation, "cache/"+r, nil)
	return o
}

// sharedRead is a read of shared role r (a user's, for the users role).
func (w *world) sharedRead(r, note string) *opRun {
	if r == roleUsers {
		u := pick(w, exploreUsers)
		return &opRun{kind: opReadUser, role: r, user: u, desc: "write creds/users user_id=" + u + note}
	}
	return &opRun{kind: opReadShared, role: r, desc: "read creds/" + r + note}
}

func (w *world) startRoleDelete(r string) {
	o := &opRun{kind: opRoleDelete, role: r, desc: "delete roles/" + r}
	o.oldSnap = w.inv.roleSnapshot(r)
	w.roleBusy[r] = true
	w.startSimple(o, logical.DeleteOperation, "roles/"+r, nil)
}

func (w *world) startSimple(o *opRun, op logical.Operation, path string, data map[string]any) {
	w.startOp(o, func(o *opRun) {
		resp, err := w.request(o, op, path, data)
		o.answers = append(o.answers, opAnswer{resp, err})
	})
}

func (w *world) startRollback(o *opRun, immediate bool) {
	w.startOp(o, func(o *opRun) {
		data := map[string]any{}
		if immediate {
			data["immediate"] = true
		}
		resp, err := o.b.HandleRequest(o.ctx, &logical.Request{Operation: logical.RollbackOperation, Data: data, Storage: o.store})
		o.answers = append(o.answers, opAnswer{resp, err})
	})
}

// startCreds starts a creds read. A write with a code is resent, as the
// Vault API client does, when it answers a 5xx (at most twice, and only while
// the client would still be waiting).
func (w *world) startCreds(o *opRun) {
	var op logical.Operation = logical.ReadOperation
	var data map[string]any
	switch {
	case o.user != "":
		op, data = logical.UpdateOperation, map[string]any{"user_id": o.user}
	case o.code != "":
		op, data = logical.UpdateOperation, map[string]any{"code": o.code}
	}
	w.startOp(o, func(o *opRun) {
		for attempt := 0; ; attempt++ {
			resp, err := w.request(o, op, "creds/"+o.role, data)
			o.answers = append(o.answers, opAnswer{resp, err})
			if (o.kind == opReadShared || o.kind == opReadUser) && (err != nil || resp.IsError()) {
				o.i6 = w.inv.i6Probe(o)
			}
			if o.code == "" || attempt == 2 || codedStatus(err) < 500 || o.ctx.Err() != nil ||
				w.clock.now().Sub(o.startAt) > vaultRetryAge {
				return
			}
		}
	})
}

func (w *world) startRevoke(o *opRun) {
	l := o.lease
	w.startOp(o, func(o *opRun) {
		s := *l.secret
		s.IssueTime, s.LeaseID = l.issue, l.id
		resp, err := o.b.HandleRequest(o.ctx, &logical.Request{Operation: logical.RevokeOperation, Secret: &s, Storage: o.store})
		o.answers = append(o.answers, opAnswer{resp, err})
	})
}

func (w *world) startVaultRevoke(l *lease) {
	w.startRevoke(&opRun{kind: opVaultRevoke, lease: l, desc: "Vault revokes lease " + l.id})
}

// ---------------------------------------------------------------- completion

// processCompletions handles the ops that finished since the last step, in
// op order: Vault registers leases, the model follows, invariants are checked.
func (w *world) processCompletions() {
	w.tick++
	w.tickNow.Store(int64(w.tick))
	var still []*opRun
	for _, o := range w.inflight {
		if !o.done.Load() {
			still = append(still, o)
			continue
		}
		o.processed = true
		o.endStep, o.endTick = w.step, w.tick
		w.complete(o)
	}
	w.inflight = still
}

func (w *world) complete(o *opRun) {
	a := o.last()
	w.logf("end   %s %s", o.name, describeAnswer(o, a))
	switch o.kind {
	case opReadShared, opReadUser, opReadExclusive, opReadCode:
		for _, ans := range o.answers {
			w.inv.checkI5(o, ans)
		}
		if a.err == nil && a.resp != nil && !a.resp.IsError() && a.resp.Secret != nil {
			tok, _ := a.resp.Data["access_token"].(string)
			w.registerLease(o, a.resp, tok)
			w.inv.checkI1(o, tok)
			w.inv.checkI9(o, tok)
			if o.kind == opReadShared || o.kind == opReadUser {
				w.inv.handedOut(o.role, tok)
			}
		} else if o.kind == opReadShared || o.kind == opReadUser {
			w.inv.checkI6a(o)
		}
	case opRevokeLease, opVaultRevoke:
		l := o.lease
		if a.err == nil && (a.resp == nil || !a.resp.IsError()) {
			l.revoked, l.revoking = true, false
			w.inv.leaseEvent(l.token, "lease "+l.id+" revoked by "+o.name)
		} else if l.revokeFails++; l.revokeFails >= maxVaultRevokeAttempts {
			// Vault gives up: the lease is irrevocable, never tried again.
			l.irrevocable = true
			w.logf("Vault gives up on lease %s after %d failed revocations (irrevocable)", l.id, l.revokeFails)
			w.inv.leaseEvent(l.token, fmt.Sprintf("lease %s irrevocable after %d failed revocations", l.id, l.revokeFails))
			w.inv.markIrrevocable(l.token)
		} else {
			// Vault keeps the lease and tries again later.
			w.vaultQ = append(w.vaultQ, l)
		}
	case opRenewLease:
		l := o.lease
		if a.err == nil && a.resp != nil && !a.resp.IsError() && a.resp.Secret != nil && !l.revoked && !l.revoking {
			now := w.clock.now()
			exp := now.Add(a.resp.Secret.TTL)
			if a.resp.Secret.MaxTTL > 0 {
				if m := l.issue.Add(a.resp.Secret.MaxTTL); exp.After(m) {
					exp = m
				}
			}
			l.expire = exp
		}
	case opFlush, opFlushHostDown:
		w.inv.flushDone(o)
	case opConfigRotate, opConfigMove, opConfigCreate, opConfigDelete:
		w.configOps--
		if a.err == nil && (a.resp == nil || !a.resp.IsError()) && o.oldSnap != nil {
			w.inv.retired(o)
		}
	case opRoleEdit, opRoleDelete, opRoleCreate:
		delete(w.roleBusy, o.role)
		if a.err == nil && (a.resp == nil || !a.resp.IsError()) && o.oldSnap != nil {
			w.inv.retired(o)
		}
	case opPeriodicHostDown:
		w.inv.checkI6b(o)
	}
	switch o.kind {
	case opPeriodic, opPeriodicHostDown, opRollbackImmediate:
		w.inv.passDone(o)
	}
	w.inv.checkI7(o)
	w.inv.checkLeaks(o)
}

func describeAnswer(o *opRun, a opAnswer) string {
	var b strings.Builder
	if len(o.answers) > 1 {
		fmt.Fprintf(&b, "(%d sends) ", len(o.answers))
	}
	switch {
	case a.err != nil:
		if c := codedStatus(a.err); c != 0 {
			fmt.Fprintf(&b, "→ %d %s", c, a.err)
		} else {
			fmt.Fprintf(&b, "→ error (500) %s", a.err)
		}
	case a.resp == nil:
		b.WriteString("→ ok (no body)")
	case a.resp.IsError():
		fmt.Fprintf(&b, "→ 400 %s", a.resp.Error())
	default:
		b.WriteString("→ ok")
		if tok, ok := a.resp.Data["access_token"].(string); ok {
			fmt.Fprintf(&b, " token %s", shortTok(tok))
		}
		if a.resp.Secret != nil {
			fmt.Fprintf(&b, " ttl=%s", a.resp.Secret.TTL)
		}
		if len(a.resp.Warnings) > 0 {
			fmt.Fprintf(&b, " (%d warnings)", len(a.resp.Warnings))
		}
	}
	return b.String()
}

// registerLease is Vault's part of a creds answer: it stores the lease.
func (w *world) registerLease(o *opRun, resp *logical.Response, tok string) {
	raw, _ := json.Marshal(resp.Secret.InternalData)
	internal := map[string]any{}
	_ = json.Unmarshal(raw, &internal)
	s := &logical.Secret{LeaseOptions: resp.Secret.LeaseOptions, InternalData: internal}
	now := w.clock.now()
	l := &lease{id: "L" + itoa(len(w.leases)+1), role: o.role, token: tok, secret: s, issue: now,
		expire: now.Add(resp.Secret.TTL), exclusive: internal["token_reuse"] == reuseExclusive, by: o.name}
	if resp.Secret.MaxTTL > 0 {
		l.maxExpire = now.Add(resp.Secret.MaxTTL)
	}
	w.leases = append(w.leases, l)
	w.inv.leaseEvent(tok, fmt.Sprintf("leased as %s to %s (ttl %s)", l.id, o.name, resp.Secret.TTL))
}

// ---------------------------------------------------------------- errors

// decodeAssertionUser reads the user id out of a fulfillment_user_assertion.
func decodeAssertionUser(a string) (string, bool) {
	raw, err := base64.StdEncoding.DecodeString(a)
	if err != nil {
		return "", false
	}
	var v struct {
		UserID string `json:"user_id"`
	}
	if json.Unmarshal(raw, &v) != nil {
		return "", false
	}
	return v.UserID, true
}

// ---------------------------------------------------------------- storage nemesis

// storageEvent pre-fills a revocation queue, or starts or ends a slow phase
// or (but in calm seeds) a write outage.
func (w *world) storageEvent() {
	switch x := w.rng.IntN(10); {
	case x < 4:
		w.fillQueue()
	case x < 7:
		if w.storageSlow > 0 {
			w.storageSlow = 0
			w.logf("storage is fast again")
			return
		}
		w.storageSlow = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second, 5 * time.Second}[w.rng.IntN(4)]
		w.logf("storage turns slow: each call takes %s", w.storageSlow)
	default:
		if w.calm && !w.writesFailing {
			w.advanceClock()
			return
		}
		w.writesFailing = !w.writesFailing
		if w.writesFailing {
			for _, o := range w.inflight {
				if o.kind == opRestart || o.kind == opUpgrade {
					w.cleanedInOutage[o.gen] = true // still being cleaned up
				}
			}
			w.logf("storage refuses every write")
		} else {
			w.logf("storage takes writes again")
		}
	}
}

// fillQueue writes, as another node or an earlier process would have, a
// role's revocation queue of tens to thousands of entries: most expired,
// a few live ones of the current credentials (unknown to Connect, which
// revokes those with a 200), one in five fills with an entry or two that
// cannot be decoded. Keys are the engine's own (pendingKey), so the layout
// is whichever the engine writes. A deleted role's queue is filled too.
func (w *world) fillQueue() {
	ctx := context.Background()
	r := pick(w, append(append([]string(nil), allRoles...), "gone"))
	n := 20 + w.rng.IntN(180)
	if w.rng.IntN(2) == 0 {
		n = 500 + w.rng.IntN(2500)
	}
	cfg := w.rawConfig()
	live := 0
	if cfg.configured() {
		live = w.rng.IntN(min(n, 30) + 1)
	}
	corrupt := 0
	if w.rng.IntN(5) == 0 {
		corrupt = 1 + w.rng.IntN(2)
	}
	now := w.clock.now()
	w.fills++
	for i := range n {
		p := pendingRevocation{Role: r, revocable: revocable{
			CredentialsID: "explore-long-gone",
			AccessToken:   fmt.Sprintf("xfill%03d%035d", w.fills, i),
			ExpiresAt:     now.Add(-time.Duration(1+w.rng.IntN(7200)) * time.Second),
		}}
		if i < live {
			p.CredentialsID = cfg.CredentialsID
			p.ExpiresAt = now.Add(time.Duration(120+w.rng.IntN(7000)) * time.Second)
		}
		key := pendingKey(r, p.AccessToken)
		e, err := logical.StorageEntryJSON(key, p)
		if err != nil {
			panic(err)
		}
		_ = w.inner.Put(ctx, e)
		w.prefilled[key] = true
	}
	for i := range corrupt {
		key := pendingKey(r, fmt.Sprintf("xbad%03d%036d", w.fills, i))
		_ = w.inner.Put(ctx, &logical.StorageEntry{Key: key, Value: []byte(`{"role": not json`)})
		w.prefilled[key] = true
	}
	w.inv.foreignQueueWrite()
	w.logf("revoking/%s/ pre-filled with %d entries (%d live, %d that cannot be decoded)", r, n+corrupt, live, corrupt)
}

// liveExclusiveLeases are the live leases of exclusive tokens.
func (w *world) liveExclusiveLeases() []*lease {
	var out []*lease
	for _, l := range w.liveLeases() {
		if l.exclusive {
			out = append(out, l)
		}
	}
	return out
}

// queueRoles are the roles whose revocation queue holds something.
func (w *world) queueRoles() []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range w.queueKeys() {
		r := queueRole(k)
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// startQueueRace starts a flush, a periodic pass and (with a live lease of
// the role) a lease revocation of one role in one decision. Either freely,
// in seeded order, the scheduler interleaving their calls (the flush's drop
// of a stored token failing half of the time): the role is one whose queue
// holds entries, or a live lease's (an exclusive one preferred), or one
// with a stored token. Or, one time in three when a role-wide token is
// stored, the flush runs until it has queued the token and is about to drop
// it, the pass runs as far as it goes meanwhile, and the drop fails (the
// flush undoes its move); then a read of the role.
func (w *world) startQueueRace() {
	var stored []string
	for _, r := range []string{roleCC, roleCC2} {
		if t := w.rawToken(tokenKey(r, "")); t != nil && t.leasable(w.clock.now()) {
			stored = append(stored, r)
		}
	}
	if len(stored) > 0 && w.rng.IntN(3) == 0 {
		w.flushUndoRace(pick(w, stored))
		return
	}
	var choices [][]string
	if qs := w.queueRoles(); len(qs) > 0 {
		choices = append(choices, qs)
	}
	var leased []string
	for _, l := range w.liveExclusiveLeases() {
		leased = append(leased, l.role)
	}
	if len(leased) == 0 {
		for _, l := range w.liveLeases() {
			leased = append(leased, l.role)
		}
	}
	if len(leased) > 0 {
		choices = append(choices, leased)
	}
	if len(stored) > 0 {
		choices = append(choices, stored)
	}
	r := pick(w, allRoles)
	if len(choices) > 0 {
		r = pick(w, pick(w, choices))
	}
	l := w.liveLeaseOf(r)
	w.logf("queue race on role %s: flush, periodic pass%s", r, map[bool]string{true: " and a lease revocation", false: ""}[l != nil])
	failDrop := w.rng.IntN(2) == 0
	for _, i := range w.rng.Perm(3) {
		switch i {
		case 0:
			f := w.startFlush(opFlush, r)
			if failDrop {
				w.failDrop(f, r)
			}
		case 1:
			w.startRollback(&opRun{kind: opPeriodic, desc: "periodic (queue race on " + r + ")"}, false)
		case 2:
			if l != nil {
				l.revoking = true
				w.startRevoke(&opRun{kind: opRevokeLease, lease: l, desc: "lease revoke " + l.id + " (queue race)"})
			}
		}
	}
}

// liveLeaseOf is a live lease of role r (an exclusive one first), if any.
func (w *world) liveLeaseOf(r string) *lease {
	var shared *lease
	for _, l := range w.liveLeases() {
		switch {
		case l.role != r:
		case l.exclusive:
			return l
		case shared == nil:
			shared = l
		}
	}
	return shared
}

// failDrop arms a failure of flush f's next drop of a stored token of r.
func (w *world) failDrop(f *opRun, r string) {
	w.failOnce = func(pc *parkedCall) bool {
		return pc.op == f && pc.what == "delete" && tokenRole(pc.key) == r
	}
	w.logf("  the drop of a stored token of %s by %s will fail", r, f.name)
}

// flushUndoRace: see startQueueRace.
func (w *world) flushUndoRace(r string) {
	w.logf("queue race on role %s: the flush queues its token, a periodic pass runs, the flush's drop fails", r)
	f := w.startFlush(opFlush, r)
	w.failDrop(f, r)
	w.runUntil(f, func(pc *parkedCall) bool { return pc.what == "delete" && tokenRole(pc.key) == r })
	p := &opRun{kind: opPeriodic, desc: "periodic (queue race on " + r + ")"}
	w.startRollback(p, false)
	w.runOwnCalls(p)
	w.runOwnCalls(f)
	w.startCreds(w.sharedRead(r, " (after the race)"))
}

// runUntil releases o's parked calls (the RNG picks among them, and their
// faults) until one of them matches stop (left parked), o ends, or none of
// its calls is parked.
func (w *world) runUntil(o *opRun, stop func(*parkedCall) bool) {
	for range 500 {
		if o.done.Load() {
			break
		}
		var mine []*parkedCall
		for _, pc := range w.sched.parkedSorted() {
			if pc.op == o {
				if stop(pc) {
					return
				}
				mine = append(mine, pc)
			}
		}
		if len(mine) == 0 {
			break
		}
		w.releaseOne(mine)
		w.sched.settle()
	}
	w.processCompletions()
}

// startConfigVerifyLeaves writes config with verify=true (a rotation at the
// current host, or a first config) and runs its calls ahead of the rest
// until its caller leaves: while Connect handles the verify token request
// (the answer lost to the request's context), or, the other half of the
// time, as one of its first storage calls is about to be made.
func (w *world) startConfigVerifyLeaves() {
	cfg := w.rawConfig()
	k, h := opConfigCreate, pick(w, w.hosts)
	if cfg.configured() {
		k, h = opConfigRotate, w.hostByBaseURL(cfg.BaseURL)
	}
	secret := w.newSecret(h)
	h.addSecret(secret)
	w.inv.writeSecret(secret, h.name, h.clientID)
	atVerify := w.rng.IntN(2) == 0
	storageLeft := w.rng.IntN(5)
	o := &opRun{kind: k, secret: secret, desc: fmt.Sprintf("write config (verify=true, new secret at %s; its caller leaves mid-request)", h.name)}
	o.oldSnap = w.inv.allSharedSnapshot()
	w.configOps++
	w.startSimple(o, logical.UpdateOperation, "config", w.configData(h, secret, true))
	for range 200 {
		if o.done.Load() {
			break
		}
		var mine []*parkedCall
		for _, pc := range w.sched.parkedSorted() {
			if pc.op == o {
				mine = append(mine, pc)
			}
		}
		if len(mine) == 0 {
			break
		}
		pc := mine[w.rng.IntN(len(mine))]
		if atVerify && pc.kind == "connect" && strings.Contains(pc.label, " token ") {
			o.disconnected = true
			w.logf("release %s [%s]", pc.label, faultCallerLeaves)
			w.sched.release(pc, verdict{leave: o.cancel})
			w.sched.settle()
			break
		}
		if !atVerify && pc.kind == "storage" {
			if storageLeft == 0 {
				o.disconnected = true
				w.logf("client of %s goes away (request cancelled)", o.name)
				o.cancel()
				w.sched.settle()
				break
			}
			storageLeft--
		}
		w.releaseCall(pc)
		w.sched.settle()
	}
	w.processCompletions()
}

// revokeWhileWritesFail is Vault revoking exclusive lease l while storage
// refuses every write: each failed attempt is retried after Vault's backoff
// (the clock moves), until one succeeds, the attempt blocks behind another
// operation (the scheduler takes over), or Vault gives up and marks the
// lease irrevocable. Then storage takes writes again.
func (w *world) revokeWhileWritesFail(l *lease) {
	l.revoking = true
	w.writesFailing = true
	w.logf("storage refuses every write while Vault revokes lease %s", l.id)
	for attempt := 1; attempt <= maxVaultRevokeAttempts; attempt++ {
		o := &opRun{kind: opVaultRevoke, lease: l, desc: fmt.Sprintf("Vault revokes lease %s (attempt %d, storage refusing writes)", l.id, attempt)}
		w.startRevoke(o)
		w.runOwnCalls(o)
		if !o.processed || l.revoked || l.irrevocable {
			break
		}
		// complete queued the retry: Vault waits out its backoff first.
		for i, x := range w.vaultQ {
			if x == l {
				w.vaultQ = append(w.vaultQ[:i], w.vaultQ[i+1:]...)
				break
			}
		}
		backoff := time.Duration(float64(vaultRevokeRetryBase<<l.revokeFails) * (0.5 + w.rng.Float64()))
		w.logf("Vault retries lease %s in %s", l.id, backoff.Round(time.Second))
		w.advanceTo(w.clock.now().Add(backoff))
	}
	w.writesFailing = false
	w.logf("storage takes writes again")
}
