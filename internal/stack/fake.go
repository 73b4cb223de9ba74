package stack

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// FakeOptions configure StartFake.
type FakeOptions struct {
	Bin      string // the cmd/connect-fake binary
	Dir      string // holds fake-secret, fake-url and fake.log
	ClientID string
	Lifetime time.Duration // expires_in of minted tokens; 0: the fake's default
	Latency  time.Duration // added delay per token request, before the mint
	// AnswerDelay holds each token answer after the mint (see SetAnswerDelay).
	AnswerDelay time.Duration
}

// Fake is cmd/connect-fake running as a process, with a client for its
// /_fake/ admin API (connect/connectfake/admin.go).
type Fake struct {
	*Proc
	URL        string
	ClientID   string
	secret     string // never printed
	secretFile string
	client     *http.Client
}

// StartFake runs the Connect fake on a free loopback port with a fresh
// random client secret, written to SecretFile.
func StartFake(o FakeOptions) (*Fake, error) {
	f := &Fake{ClientID: o.ClientID, secret: "fake-" + RandomHex(24), secretFile: filepath.Join(o.Dir, "fake-secret"),
		client: &http.Client{Timeout: 30 * time.Second}}
	if err := os.WriteFile(f.secretFile, []byte(f.secret), 0o600); err != nil {
		return nil, fmt.Errorf("the fake's secret file: %w", err)
	}
	addrFile := filepath.Join(o.Dir, "fake-url")
	args := []string{"-client-id", o.ClientID, "-secret-file", f.secretFile, "-addr-file", addrFile}
	if o.Lifetime > 0 {
		args = append(args, "-token-lifetime", o.Lifetime.String())
	}
	if o.Latency > 0 {
		args = append(args, "-latency", o.Latency.String())
	}
	if o.AnswerDelay > 0 {
		args = append(args, "-answer-delay", o.AnswerDelay.String())
	}
	// An empty CONNECT_FAKE_CLIENT_SECRET makes the fake read the file.
	p, err := StartProc("connect-fake", filepath.Join(o.Dir, "fake.log"), []string{"CONNECT_FAKE_CLIENT_SECRET="}, o.Bin, args...)
	if err != nil {
		return nil, err
	}
	f.Proc = p
	if err := p.WaitFor(10*time.Second, "the Connect fake", func() bool {
		b, err := os.ReadFile(addrFile)
		f.URL = strings.TrimSpace(string(b))
		return err == nil && f.URL != ""
	}); err != nil {
		p.Stop()
		return nil, err
	}
	return f, nil
}

// Secret is the client secret. Never print it.
func (f *Fake) Secret() string { return f.secret }

// SecretFile is where the client secret lives, for `client_secret=@file`.
func (f *Fake) SecretFile() string { return f.secretFile }

// Do is one request to the fake; out is decoded from a 2xx answer. Only a
// failed request or an undecodable answer is an error: callers judge the
// status.
func (f *Fake) Do(method, path string, body, out any) (int, error) {
	where := method + " " + path
	if strings.HasPrefix(path, "/_fake/tokens/") {
		where = method + " /_fake/tokens/{token}" // keep tokens out of errors
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, fmt.Errorf("fake %s: encoding body: %w", where, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, f.URL+path, rd)
	if err != nil {
		return 0, fmt.Errorf("fake %s: %w", where, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		var ue *url.Error // its message repeats the URL, which may hold a token
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("fake %s: %w", where, err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode < 300 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("fake %s: decoding: %w", where, err)
		}
	}
	return resp.StatusCode, nil
}

// admin is Do that wants status want.
func (f *Fake) admin(want int, method, path string, body, out any) error {
	st, err := f.Do(method, path, body, out)
	if err == nil && st != want {
		err = fmt.Errorf("fake %s %s: HTTP %d, want %d", method, path, st, want)
	}
	return err
}

// FakeStats is the fake's counters (GET /_fake/stats).
type FakeStats = connectfake.Stats

// Stats returns the fake's counters.
func (f *Fake) Stats() (FakeStats, error) {
	var st FakeStats
	err := f.admin(http.StatusOK, http.MethodGet, "/_fake/stats", nil, &st)
	return st, err
}

// Reset zeroes the counters.
func (f *Fake) Reset() error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/reset", nil, nil)
}

// InjectFaults queues faults for path (fields of connectfake's admin API:
// status, retry_after, body, delay_ms, hang, reset, after_handling, repeat).
func (f *Fake) InjectFaults(path string, faults ...map[string]any) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/faults", map[string]any{"path": path, "faults": faults}, nil)
}

// ClearFaults drops the queued faults.
func (f *Fake) ClearFaults() error {
	return f.admin(http.StatusNoContent, http.MethodDelete, "/_fake/faults", nil, nil)
}

// SetLifetime sets expires_in of tokens minted from now on (whole seconds).
func (f *Fake) SetLifetime(d time.Duration) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/lifetime", map[string]int{"seconds": int(d / time.Second)}, nil)
}

// SetClockSkew offsets the created_at the fake reports (whole seconds), as a
// server that reuses tokens reports their original creation time.
func (f *Fake) SetClockSkew(d time.Duration) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/skew", map[string]int{"seconds": int(d / time.Second)}, nil)
}

// SetLatency sets the added delay per token request (whole milliseconds).
func (f *Fake) SetLatency(d time.Duration) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/latency", map[string]int{"milliseconds": int(d / time.Millisecond)}, nil)
}

// AddClient registers another application.
func (f *Fake) AddClient(id, secret string) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/clients", map[string]string{"client_id": id, "client_secret": secret}, nil)
}

// Authorize issues an authorization code for the fake's client, as if userID
// had consented and been sent back to redirectURI.
func (f *Fake) Authorize(redirectURI, userID string) (string, error) {
	var out struct {
		Code string `json:"code"`
	}
	err := f.admin(http.StatusOK, http.MethodPost, "/_fake/authorize",
		map[string]string{"client_id": f.ClientID, "redirect_uri": redirectURI, "user_id": userID}, &out)
	return out.Code, err
}

// TokenInfo is what the fake knows of a token, and whether it is live.
type TokenInfo = connectfake.TokenState

// TokenInfo asks the fake about tok; an unknown token is an error.
func (f *Fake) TokenInfo(tok string) (TokenInfo, error) {
	var info TokenInfo
	st, err := f.Do(http.MethodGet, "/_fake/tokens/"+tok, nil, &info)
	if err == nil && st != http.StatusOK {
		err = fmt.Errorf("the fake does not know the token (HTTP %d)", st)
	}
	return info, err
}

// Users calls POST /v2/fulfillment/users with the bearer token and returns
// Connect's status: 200 means the token works.
func (f *Fake) Users(token string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, f.URL+"/v2/fulfillment/users",
		strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith","phone_number":"800-555-0100"}`))
	if err != nil {
		return 0, fmt.Errorf("fake users: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("fake POST /v2/fulfillment/users: %w", err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// SetAnswerDelay holds each token answer for d (whole milliseconds) after
// the token is minted: a client that dies or leaves meanwhile never gets a
// token that is live at Connect (SetLatency waits before the mint).
func (f *Fake) SetAnswerDelay(d time.Duration) error {
	return f.admin(http.StatusNoContent, http.MethodPost, "/_fake/answer-delay", map[string]int{"milliseconds": int(d / time.Millisecond)}, nil)
}

// Held is how many minted tokens' answers the fake is holding (see
// SetAnswerDelay).
func (f *Fake) Held() (int, error) {
	var out struct {
		Held int `json:"held"`
	}
	err := f.admin(http.StatusOK, http.MethodGet, "/_fake/held", nil, &out)
	return out.Held, err
}

// MintRecord is one token the fake minted, named by TokenID, never by value.
type MintRecord struct {
	ID        string    `json:"id"`
	GrantType string    `json:"grant_type"`
	UserID    string    `json:"user_id"`
	MintedAt  time.Time `json:"minted_at"`
	// Outcome of its answer: "held", "sent" (written to the connection, which
	// does not prove the client read it), "client_gone" (never sent) or
	// "write_failed".
	Outcome    string    `json:"outcome"`
	AnsweredAt time.Time `json:"answered_at"`
	Live       bool      `json:"live"` // when MintLog was called
}

// MintLog is every token the fake minted, oldest first, with whether each
// is live now.
func (f *Fake) MintLog() ([]MintRecord, error) {
	var out struct {
		Mints []MintRecord `json:"mints"`
	}
	err := f.admin(http.StatusOK, http.MethodGet, "/_fake/mints", nil, &out)
	return out.Mints, err
}

// TokenID names a token as MintLog does: the hex SHA-256 of its value.
func TokenID(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}
