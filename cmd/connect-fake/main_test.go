package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// -h names the helper commands, authorize among them, not only the flags.
func TestUsageNamesHelperCommands(t *testing.T) {
	var buf bytes.Buffer
	flag.CommandLine.SetOutput(&buf)
	defer flag.CommandLine.SetOutput(nil)
	usage()
	for _, want := range []string{"connect-fake authorize -base-url URL", "-redirect-uri", "connect-fake check-token", "code=", "connect-fake new-secret -base-url URL -client-id ID -secret-file FILE"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, buf.String())
		}
	}
}

// fetchMints is GET /_fake/mints.
func fetchMints(t *testing.T, base string) (held int, mints []mintRecord) {
	t.Helper()
	resp, err := http.Get(base + "/_fake/mints")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Held  int          `json:"held"`
		Mints []mintRecord `json:"mints"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Held, out.Mints
}

func mintToken(client *http.Client, base string) (string, error) {
	body := `{"client_id":"c","client_secret":"s","grant_type":"client_credentials"}`
	resp, err := client.Post(base+connectfake.PathToken, "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", err
	}
	return v.AccessToken, nil
}

// The mint log names every minted token by hash with its outcome; a held
// answer whose client leaves is never sent, and its token stays live.
func TestAnswersLogMintsAndHoldAnswers(t *testing.T) {
	fake := connectfake.New()
	defer fake.Close()
	fake.EnableAdmin()
	fake.AddClient("c", "s")
	a := newAnswers(fake, 0)
	srv := httptest.NewServer(a)
	defer srv.Close()
	defer a.close()

	tok, err := mintToken(http.DefaultClient, srv.URL)
	if err != nil || tok == "" {
		t.Fatalf("mint: %v", err)
	}
	held, mints := fetchMints(t, srv.URL)
	if held != 0 || len(mints) != 1 {
		t.Fatalf("held %d, %d mints; want 0, 1", held, len(mints))
	}
	if m := mints[0]; m.ID != TokenID(tok) || m.Outcome != outcomeSent || !m.Live || m.GrantType != "client_credentials" || m.AnsweredAt.Before(m.MintedAt) {
		t.Errorf("mint record %+v", m)
	}

	resp, err := http.Post(srv.URL+"/_fake/answer-delay", "application/json", strings.NewReader(`{"milliseconds":400}`))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("answer-delay: %v %v", resp, err)
	}
	resp.Body.Close()
	impatient := &http.Client{Timeout: 150 * time.Millisecond}
	if _, err := mintToken(impatient, srv.URL); err == nil {
		t.Fatal("a client with a 150ms timeout got an answer held for 400ms")
	}
	// The client left while its answer was held: the token is live, and
	// nobody got it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		held, mints = fetchMints(t, srv.URL)
		if held == 0 && len(mints) == 2 && mints[1].Outcome != outcomeHeld || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m := mints[1]; held != 0 || m.Outcome != outcomeClientGone || !m.Live || !m.AnsweredAt.IsZero() {
		t.Errorf("held %d, abandoned mint %+v", held, m)
	}

	// Other paths reach the fake: its admin API and token endpoint faults.
	resp, err = http.Get(srv.URL + "/_fake/stats")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stats through answers: %v %v", resp, err)
	}
	resp.Body.Close()
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Reset: true})
	if _, err := mintToken(http.DefaultClient, srv.URL); err == nil {
		t.Error("an injected reset reached the client as an answer")
	}
}
