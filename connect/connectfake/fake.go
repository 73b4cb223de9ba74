// Package connectfake is an in-process fake of Instacart Connect's OAuth
// endpoints, faithful to the shapes in Instacart's documentation, for tests,
// demos and benchmarks. It deliberately shares no code with package connect so
// that a bug in the client cannot be mirrored (and hidden) by the fake.
package connectfake

import (
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"sync"
	"time"
)

// Endpoint paths served by the fake.
const (
	PathToken  = "/v2/oauth/token"
	PathRevoke = "/v2/oauth/token/revoke"
	PathUsers  = "/v2/fulfillment/users"
	// PathSandboxUsers prefixes the development-host helpers; the authorize
	// helper is PathSandboxUsers + "/{user_id}/authorize".
	PathSandboxUsers = "/v2/fulfillment_sandbox/instacart_users"
)

// DefaultTokenLifetime is Connect's documented token validity.
const DefaultTokenLifetime = 24 * time.Hour

// grantScopes lists which scopes each grant may request; a request mixing
// grants' scopes is invalid_scope, as on Connect.
var grantScopes = map[string]map[string]bool{
	"client_credentials": {
		"connect:fulfillment": true, "connect:data_ingestion": true, "connect:compliance": true,
		"connect:ian": true, "Connect::Orders::RatingService": true,
	},
	"fulfillment_user_assertion": {"connect:recommendations": true, "connect:post_checkout": true},
	"authorization_code":         {"account_linking": true},
}

// defaultScopes is what the fake application is configured with when a
// request omits scope.
var defaultScopes = map[string]string{
	"client_credentials":         "connect:fulfillment",
	"fulfillment_user_assertion": "connect:recommendations",
	"authorization_code":         "account_linking",
}

// Fault is one injected misbehaviour, consumed by the next request to its path.
// A zero Status with no Hang or Reset serves the request normally after Delay.
//
// With AfterHandling the fake first handles the request for real (mints the
// token, consumes the authorization code, revokes), discards that answer and
// only then applies the fault: Connect processed the request but the client
// never learns the outcome (Reset, Hang), learns it late (Delay alone: the
// real answer is sent after it) or gets another answer (Status, Body).
type Fault struct {
	Status     int    // response status to send instead of handling the request
	RetryAfter string // Retry-After header value (seconds or HTTP date)
	// Body is the raw response body; a generic OAuth error body when empty.
	// With AfterHandling, PlaceholderAccessToken in it becomes the token just
	// minted, so a real token can be wrapped in an unusable 200.
	Body          string
	Delay         time.Duration // wait before answering
	Hang          bool          // accept the request and never answer (until the client gives up)
	Reset         bool          // send part of a response and reset the connection
	AfterHandling bool          // handle the request for real first, then misbehave
}

// PlaceholderAccessToken in an AfterHandling fault's Body is replaced with
// the token the request minted.
const PlaceholderAccessToken = "{access_token}"

// TokenInfo is what the fake knows about a token it minted.
type TokenInfo struct {
	ClientID  string    `json:"client_id"`
	GrantType string    `json:"grant_type"`
	UserID    string    `json:"user_id"`
	Scopes    []string  `json:"scopes"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Revoked   bool      `json:"revoked"`
}

// TokenState is the body of GET /_fake/tokens/{token}: what the fake knows
// of the token, and whether Connect would accept it now.
type TokenState struct {
	TokenInfo
	Live bool `json:"live"`
}

// RecordedRequest is the last request seen on a path, for assertions on the
// wire format.
type RecordedRequest struct {
	Method      string
	RawQuery    string
	ContentType string
	Header      http.Header
	Body        []byte
}

type authCode struct {
	clientID, redirectURI, userID string
	used                          bool
}

// Server is a running fake. All methods are safe for concurrent use.
type Server struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234.
	URL string

	srv       *httptest.Server
	closing   chan struct{}
	closeOnce sync.Once

	mu          sync.Mutex
	clients     map[string][]string // client id → the secrets it accepts (more than one while rotating)
	tokens      map[string]*TokenInfo
	codes       map[string]*authCode
	faults      map[string][]Fault
	requests    map[string]int
	last        map[string]RecordedRequest
	mints       int
	revocations int
	lifetime    time.Duration
	skew        time.Duration
	latency     time.Duration
	admin       bool
	advance     time.Duration // added to the wall clock: see Advance
}

// New starts a fake on a free loopback port.
func New() *Server {
	s, err := NewServer("127.0.0.1:0")
	if err != nil {
		panic("connectfake: " + err.Error())
	}
	return s
}

// NewServer starts a fake listening on addr ("127.0.0.1:0" for a free port).
func NewServer(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		closing:  make(chan struct{}),
		clients:  map[string][]string{},
		tokens:   map[string]*TokenInfo{},
		codes:    map[string]*authCode{},
		faults:   map[string][]Fault{},
		requests: map[string]int{},
		last:     map[string]RecordedRequest{},
		lifetime: DefaultTokenLifetime,
	}
	s.srv = httptest.NewUnstartedServer(s.Handler())
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.URL = s.srv.URL
	return s, nil
}

// Close releases hung requests and stops the server.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

// EnableAdmin exposes the /_fake/ control API (for the demo and the
// end-to-end suite, which drive the fake from another process).
func (s *Server) EnableAdmin() {
	s.mu.Lock()
	s.admin = true
	s.mu.Unlock()
}

// AddClient registers (or re-keys) an application: secret becomes its only
// secret.
func (s *Server) AddClient(id, secret string) {
	s.mu.Lock()
	s.clients[id] = []string{secret}
	s.mu.Unlock()
}

// AddClientSecret makes an application accept secret beside the secrets it
// already accepts, as Instacart issues a second secret for a rotation; an
// unknown id is registered with secret alone.
func (s *Server) AddClientSecret(id, secret string) {
	s.mu.Lock()
	if !slices.Contains(s.clients[id], secret) {
		s.clients[id] = append(s.clients[id], secret)
	}
	s.mu.Unlock()
}

// RemoveClient forgets an application, as when Instacart disables it.
func (s *Server) RemoveClient(id string) {
	s.mu.Lock()
	delete(s.clients, id)
	s.mu.Unlock()
}

// SetTokenLifetime sets expires_in for tokens minted from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	s.lifetime = d
	s.mu.Unlock()
}

// SetClockSkew makes the fake's created_at run ahead (positive) or behind
// (negative) the real clock. Expiry at the fake still follows the real clock.
func (s *Server) SetClockSkew(d time.Duration) {
	s.mu.Lock()
	s.skew = d
	s.mu.Unlock()
}

// SetLatency adds a delay to every token request, like a real network hop.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// InjectFaults queues faults for the next requests to path, in order.
func (s *Server) InjectFaults(path string, faults ...Fault) {
	s.mu.Lock()
	s.faults[path] = append(s.faults[path], faults...)
	s.mu.Unlock()
}

// ClearFaults drops all queued faults.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = map[string][]Fault{}
	s.mu.Unlock()
}

// Requests counts requests that reached path, faulted or not.
func (s *Server) Requests(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

// Mints counts tokens issued.
func (s *Server) Mints() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mints
}

// Revocations counts successful revocations of live tokens.
func (s *Server) Revocations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revocations
}

// ResetCounters zeroes request, mint and revocation counts.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	s.requests = map[string]int{}
	s.mints, s.revocations = 0, 0
	s.mu.Unlock()
}

// Token returns what the fake knows about tok.
func (s *Server) Token(tok string) (TokenInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.tokens[tok]
	if !ok {
		return TokenInfo{}, false
	}
	return info.clone(), true
}

// TokenLive reports whether tok would be accepted by Connect's APIs now.
func (s *Server) TokenLive(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.liveLocked(tok)
}

// Tokens returns every token minted, in no particular order.
func (s *Server) Tokens() []TokenInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TokenInfo, 0, len(s.tokens))
	for _, info := range s.tokens {
		out = append(out, info.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// IssueAuthorizationCode returns a single-use code for clientID, bound to
// redirectURI, as Instacart's account-linking flow would hand to the retailer.
func (s *Server) IssueAuthorizationCode(clientID, redirectURI, userID string) string {
	code := randomToken()
	s.mu.Lock()
	s.codes[code] = &authCode{clientID: clientID, redirectURI: redirectURI, userID: userID}
	s.mu.Unlock()
	return code
}

// LastRequest returns the most recent request to path.
func (s *Server) LastRequest(path string) RecordedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[path]
}

func (s *Server) liveLocked(tok string) bool {
	info, ok := s.tokens[tok]
	return ok && !info.Revoked && s.nowLocked().Before(info.ExpiresAt)
}

func (i *TokenInfo) clone() TokenInfo {
	c := *i
	c.Scopes = append([]string(nil), i.Scopes...)
	return c
}

// randomToken returns 32 random bytes as URL-safe base64: 43 characters, the
// shape of Connect's access tokens.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Advance moves the fake's clock forward by d, so tests see tokens expire
// without waiting for them.
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	s.advance += d
	s.mu.Unlock()
}

// nowLocked is the fake's clock; s.mu must be held.
func (s *Server) nowLocked() time.Time { return time.Now().Add(s.advance) }
