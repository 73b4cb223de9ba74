package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// mintStatus is the fake's answer to a client_credentials request with id
// and secret.
func mintStatus(t *testing.T, base, id, secret string) int {
	t.Helper()
	form := url.Values{"client_id": {id}, "client_secret": {secret}, "grant_type": {"client_credentials"}}
	resp, err := http.PostForm(base+connectfake.PathToken, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// new-secret gives a client a second secret that mints, while the first still
// does, writes it 0600 and prints nothing secret; for an unknown id it creates
// the client.
func TestNewSecret(t *testing.T) {
	fake := connectfake.New()
	defer fake.Close()
	fake.EnableAdmin()
	fake.AddClient("demo-client", "old-secret")
	a := newAnswers(fake, 0)
	srv := httptest.NewServer(a)
	defer srv.Close()
	defer a.close()
	dir := t.TempDir()

	for _, id := range []string{"demo-client", "other-client"} {
		file := filepath.Join(dir, id+".secret")
		var stdout, stderr bytes.Buffer
		if code := newSecretMain([]string{"-base-url", srv.URL, "-client-id", id, "-secret-file", file}, &stdout, &stderr); code != 0 {
			t.Fatalf("new-secret %s: exit %d: %s", id, code, stderr.String())
		}
		if want := id + ": new secret written to " + file + "\n"; stdout.String() != want {
			t.Errorf("new-secret printed %q, want %q", stdout.String(), want)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		secret := string(raw)
		if secret == "" || strings.Contains(stdout.String()+stderr.String(), secret) {
			t.Errorf("the new secret is empty or was printed")
		}
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("secret file mode %v (%v), want 0600", fi.Mode().Perm(), err)
		}
		if got := mintStatus(t, srv.URL, id, secret); got != http.StatusOK {
			t.Errorf("%s with the new secret: HTTP %d, want 200", id, got)
		}
		if got := mintStatus(t, srv.URL, id, "wrong"); got == http.StatusOK {
			t.Errorf("%s minted with a secret it was never given", id)
		}
	}
	if got := mintStatus(t, srv.URL, "demo-client", "old-secret"); got != http.StatusOK {
		t.Errorf("the old secret after new-secret: HTTP %d, want 200 (a rotation keeps it valid)", got)
	}
	// A second new secret keeps the first one valid too.
	first, _ := os.ReadFile(filepath.Join(dir, "demo-client.secret"))
	second := filepath.Join(dir, "second.secret")
	if code := newSecretMain([]string{"-base-url", srv.URL, "-client-id", "demo-client", "-secret-file", second}, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Fatalf("second new-secret: exit %d", code)
	}
	if got := mintStatus(t, srv.URL, "demo-client", string(first)); got != http.StatusOK {
		t.Errorf("the first new secret after a second: HTTP %d, want 200", got)
	}
}

// A fake that refuses (here: no admin API) leaves no secret file behind, and
// missing flags are a usage error.
func TestNewSecretRefused(t *testing.T) {
	fake := connectfake.New() // admin API not enabled
	defer fake.Close()
	file := filepath.Join(t.TempDir(), "new.secret")
	var stderr bytes.Buffer
	if code := newSecretMain([]string{"-base-url", fake.URL, "-client-id", "c", "-secret-file", file}, &bytes.Buffer{}, &stderr); code != 1 {
		t.Errorf("new-secret against a fake without its admin API: exit %d, want 1: %s", code, stderr.String())
	}
	if entries, _ := os.ReadDir(filepath.Dir(file)); len(entries) != 0 {
		t.Errorf("a refused new-secret left files: %v", entries)
	}
	if code := newSecretMain([]string{"-base-url", fake.URL, "-client-id", "c"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Errorf("new-secret without -secret-file: exit %d, want 2", code)
	}
}
