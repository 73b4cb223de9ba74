package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// answers fronts the fake's handler. It keeps a log of every token the fake
// mints (by hash: the log never holds a token an admin call could print),
// and can hold each token answer for a while after the mint, so that a
// client dying meanwhile leaves a live token nobody received: a chaos run
// must account for exactly those. connectfake's latency comes before the
// mint, so a client gone by then leaves nothing behind.
//
//	POST /_fake/answer-delay {"milliseconds"}  hold token answers this long after the mint
//	GET  /_fake/held                           {"held"}: minted, answer not yet sent
//	GET  /_fake/mints                          {"held","mints":[mintRecord...]}, "live" as of now
//
// Everything else goes to the fake as it is.
type answers struct {
	fake    *connectfake.Server
	inner   http.Handler
	closing chan struct{}

	mu     sync.Mutex
	delay  time.Duration
	held   int
	mints  []*mintRecord
	tokens map[string]string // mint id → token, to ask the fake whether it is live
}

// mintRecord is one token the fake minted, named by the hex SHA-256 of its
// value.
type mintRecord struct {
	ID        string    `json:"id"`
	GrantType string    `json:"grant_type"`
	UserID    string    `json:"user_id,omitempty"`
	MintedAt  time.Time `json:"minted_at"`
	// Outcome of the answer: "held" (not sent yet), "sent" (written to the
	// connection, which proves no receipt: a killed or frozen client may
	// never read it), "client_gone" (the client left while it was held:
	// never sent) or "write_failed".
	Outcome    string    `json:"outcome"`
	AnsweredAt time.Time `json:"answered_at,omitzero"`
	Live       bool      `json:"live"`
}

// Outcomes of a token answer.
const (
	outcomeHeld        = "held"
	outcomeSent        = "sent"
	outcomeClientGone  = "client_gone"
	outcomeWriteFailed = "write_failed"
)

// TokenID names a token in the mint log: the hex SHA-256 of its value.
func TokenID(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func newAnswers(fake *connectfake.Server, delay time.Duration) *answers {
	return &answers{fake: fake, inner: fake.Handler(), closing: make(chan struct{}), delay: delay, tokens: map[string]string{}}
}

// close releases held answers (unsent).
func (a *answers) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.closing:
	default:
		close(a.closing)
	}
}

func (a *answers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/_fake/answer-delay":
		a.setDelay(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/_fake/held":
		a.mu.Lock()
		held := a.held
		a.mu.Unlock()
		writeJSON(w, map[string]int{"held": held})
	case r.Method == http.MethodGet && r.URL.Path == "/_fake/mints":
		a.list(w)
	case r.Method == http.MethodPost && r.URL.Path == connectfake.PathToken:
		a.token(w, r)
	default:
		a.inner.ServeHTTP(w, r)
	}
}

func (a *answers) setDelay(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Milliseconds int `json:"milliseconds"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<10)).Decode(&req); err != nil || req.Milliseconds < 0 {
		http.Error(w, "want {\"milliseconds\": n >= 0}", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.delay = time.Duration(req.Milliseconds) * time.Millisecond
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *answers) list(w http.ResponseWriter) {
	a.mu.Lock()
	out := struct {
		Held  int          `json:"held"`
		Mints []mintRecord `json:"mints"`
	}{Held: a.held, Mints: make([]mintRecord, 0, len(a.mints))}
	for _, m := range a.mints {
		out.Mints = append(out.Mints, *m)
	}
	tokens := make([]string, len(out.Mints))
	for i, m := range out.Mints {
		tokens[i] = a.tokens[m.ID]
	}
	a.mu.Unlock()
	for i := range out.Mints {
		out.Mints[i].Live = a.fake.TokenLive(tokens[i])
	}
	writeJSON(w, out)
}

// token lets the fake answer into a buffer, logs the token it minted, holds
// the answer for the delay, then sends it unless the client left meanwhile.
func (a *answers) token(w http.ResponseWriter, r *http.Request) {
	buf := &bufferedAnswer{w: w}
	a.inner.ServeHTTP(buf, r)
	if buf.hijacked || buf.status == 0 { // an injected reset, or a client gone: nothing to answer
		return
	}
	var rec *mintRecord
	if tok := buf.accessToken(); tok != "" {
		rec = &mintRecord{ID: TokenID(tok), MintedAt: time.Now(), Outcome: outcomeHeld}
		if info, ok := a.fake.Token(tok); ok {
			rec.GrantType, rec.UserID = info.GrantType, info.UserID
		}
		a.mu.Lock()
		a.mints = append(a.mints, rec)
		a.tokens[rec.ID] = tok
		a.held++
		a.mu.Unlock()
	}
	a.mu.Lock()
	delay := a.delay
	a.mu.Unlock()
	outcome := outcomeSent
	if delay > 0 && !a.hold(r, delay) {
		outcome = outcomeClientGone
	} else {
		w.WriteHeader(buf.status)
		if _, err := w.Write(buf.body.Bytes()); err != nil {
			outcome = outcomeWriteFailed
		}
	}
	if rec != nil {
		a.mu.Lock()
		rec.Outcome, a.held = outcome, a.held-1
		if outcome == outcomeSent {
			rec.AnsweredAt = time.Now()
		}
		a.mu.Unlock()
	}
}

// hold waits d unless the client goes away or the fake closes first.
func (a *answers) hold(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
	case <-a.closing:
	}
	return false
}

// bufferedAnswer keeps the status and body the fake writes (headers go to
// the real writer's map, sent with the status); a hijack (an injected
// connection reset) goes to the real connection.
type bufferedAnswer struct {
	w        http.ResponseWriter
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (b *bufferedAnswer) Header() http.Header { return b.w.Header() }

func (b *bufferedAnswer) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedAnswer) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

func (b *bufferedAnswer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	b.hijacked = true
	return http.NewResponseController(b.w).Hijack()
}

// accessToken is the token of a 200 answer, if any.
func (b *bufferedAnswer) accessToken() string {
	if b.status != http.StatusOK {
		return ""
	}
	var v struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(b.body.Bytes(), &v)
	return v.AccessToken
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
