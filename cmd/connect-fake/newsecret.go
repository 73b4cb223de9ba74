package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// newSecretMain is `connect-fake new-secret`: a rotation to practise on make
// dev, as Instacart issues a second client secret while the first still works.
func newSecretMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("new-secret", flag.ContinueOnError)
	fs.SetOutput(stderr)
	baseURL := fs.String("base-url", "", "base URL of the running fake")
	clientID := fs.String("client-id", "", "client id to give a new secret (created if the fake does not know it)")
	secretFile := fs.String("secret-file", "", "file to write the new secret to (mode 0600)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *baseURL == "" || *clientID == "" || *secretFile == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: connect-fake new-secret -base-url URL -client-id ID -secret-file FILE")
		return 2
	}
	if err := newSecret(*baseURL, *clientID, *secretFile); err != nil {
		fmt.Fprintf(stderr, "connect-fake new-secret: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: new secret written to %s\n", *clientID, *secretFile)
	return 0
}

// newSecret makes a random secret, has the fake accept it for clientID
// beside the secrets it accepts already, and writes it to file with mode
// 0600. The secret is written to a file of its own beside file first and
// renamed into place only once the fake took it, so file never holds a
// secret the fake refuses; the secret is never printed.
func newSecret(baseURL, clientID, file string) error {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("making a secret: %w", err)
	}
	secret := "fake-" + hex.EncodeToString(raw)
	tmp, err := os.CreateTemp(filepath.Dir(file), ".new-secret-*")
	if err != nil {
		return fmt.Errorf("writing the secret file: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the secret file: %w", err)
	}
	if _, err := tmp.WriteString(secret); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the secret file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the secret file: %w", err)
	}

	body, _ := json.Marshal(map[string]string{"client_secret": secret})
	endpoint := strings.TrimRight(baseURL, "/") + "/_fake/clients/" + url.PathEscape(clientID) + "/secrets"
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(endpoint, "application/json", bytes.NewReader(body))
	if err != nil {
		// The URL error names the endpoint, never the body.
		return fmt.Errorf("asking the fake: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("the fake at %s answered %s: %s", baseURL, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("the fake accepts the new secret, but it could not be written to %s: %w", file, err)
	}
	return nil
}
