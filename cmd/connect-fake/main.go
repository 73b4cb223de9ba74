// Command connect-fake runs the Instacart Connect fake on loopback for demos,
// the end-to-end suite and benchmarks. The client secret comes from the
// CONNECT_FAKE_CLIENT_SECRET environment variable or -secret-file (created
// with a random secret when missing); it is never printed.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	clientID := flag.String("client-id", "demo-client", "client id of the fake application")
	lifetime := flag.Duration("token-lifetime", connectfake.DefaultTokenLifetime, "expires_in of minted tokens")
	latency := flag.Duration("latency", 0, "added delay per token request")
	addrFile := flag.String("addr-file", "", "write the base URL to this file once listening")
	secretFile := flag.String("secret-file", "", "read the client secret from this file (created with a random secret if missing)")
	flag.Parse()

	secret, err := loadSecret(*secretFile)
	if err != nil {
		log.Fatalf("connect-fake: %v", err)
	}
	fake, err := connectfake.NewServer(*addr)
	if err != nil {
		log.Fatalf("connect-fake: listen: %v", err)
	}
	fake.EnableAdmin()
	fake.AddClient(*clientID, secret)
	fake.SetTokenLifetime(*lifetime)
	fake.SetLatency(*latency)

	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(fake.URL+"\n"), 0o644); err != nil {
			log.Fatalf("connect-fake: write addr file: %v", err)
		}
	}
	fmt.Printf("connect-fake listening on %s (client id %q, token lifetime %s)\n", fake.URL, *clientID, *lifetime)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	fake.Close()
}

func loadSecret(file string) (string, error) {
	if s := os.Getenv("CONNECT_FAKE_CLIENT_SECRET"); s != "" {
		return s, nil
	}
	if file == "" {
		return "", errors.New("set CONNECT_FAKE_CLIENT_SECRET or -secret-file")
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		secret := "fake-" + hex.EncodeToString(raw)
		if err := os.WriteFile(file, []byte(secret), 0o600); err != nil {
			return "", fmt.Errorf("write secret file: %w", err)
		}
		return secret, nil
	}
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return "", fmt.Errorf("secret file %s is empty", file)
	}
	return secret, nil
}
