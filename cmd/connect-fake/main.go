// Command connect-fake runs the Instacart Connect fake on loopback for demos,
// the end-to-end suite and benchmarks. The client secret comes from the
// CONNECT_FAKE_CLIENT_SECRET environment variable or -secret-file (created
// with a random secret when missing); it is never printed.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check-token" {
		os.Exit(checkToken(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "authorize" {
		os.Exit(authorize(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "new-secret" {
		os.Exit(newSecretMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	clientID := flag.String("client-id", "demo-client", "client id of the fake application")
	lifetime := flag.Duration("token-lifetime", connectfake.DefaultTokenLifetime, "expires_in of minted tokens")
	latency := flag.Duration("latency", 0, "added delay per token request, before the token is minted")
	answerDelay := flag.Duration("answer-delay", 0, "hold each token answer this long after the token is minted (a client that leaves meanwhile never gets it); also POST /_fake/answer-delay")
	addrFile := flag.String("addr-file", "", "write the base URL to this file once listening")
	secretFile := flag.String("secret-file", "", "read the client secret from this file (created with a random secret if missing)")
	flag.Usage = usage
	flag.Parse()

	secret, err := loadSecret(*secretFile)
	if err != nil {
		log.Fatalf("connect-fake: %v", err)
	}
	// The fake listens on a port of its own that nobody is told; clients
	// reach it through answers, which logs its mints and holds answers.
	fake, err := connectfake.NewServer("127.0.0.1:0")
	if err != nil {
		log.Fatalf("connect-fake: listen: %v", err)
	}
	fake.EnableAdmin()
	fake.AddClient(*clientID, secret)
	fake.SetTokenLifetime(*lifetime)
	fake.SetLatency(*latency)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("connect-fake: listen: %v", err)
	}
	front := newAnswers(fake, *answerDelay)
	srv := &http.Server{Handler: front, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	baseURL := "http://" + ln.Addr().String()

	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(baseURL+"\n"), 0o644); err != nil {
			log.Fatalf("connect-fake: write addr file: %v", err)
		}
	}
	fmt.Printf("connect-fake listening on %s (client id %q, token lifetime %s)\n", baseURL, *clientID, *lifetime)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	front.close()
	_ = srv.Close()
	fake.Close()
}

// usage is -h: the server's flags and the helper commands.
func usage() {
	out := flag.CommandLine.Output()
	fmt.Fprint(out, `Usage:
  connect-fake [flags]
      run the Instacart Connect fake on loopback until interrupted
  connect-fake authorize -base-url URL [-client-id ID] -redirect-uri URI -user-id USER
      ask a running fake for a single-use authorization code, as Instacart's
      account-linking flow hands one to the retailer, and print it; use it with
      vault write instacart/creds/<authorization_code role> code=...
      (-redirect-uri must be the role's redirect_uri)
  connect-fake new-secret -base-url URL -client-id ID -secret-file FILE
      have a running fake accept a new random secret for client ID (creating
      the client if it did not exist; an existing client's old secret stays
      valid), as Instacart issues a second secret for a rotation; writes it to
      FILE with mode 0600 and prints nothing secret. Then
      vault write instacart/config client_id=ID client_secret=@FILE
  connect-fake check-token -base-url URL < token
      call POST /v2/fulfillment/users with the token read from stdin and print
      the status (exit 0 for 200, 1 otherwise)

Flags:
`)
	flag.PrintDefaults()
}

// checkToken calls POST /v2/fulfillment/users with the bearer token read from
// stdin (never from argv, where ps would show it) and prints Connect's status,
// so scripts can prove a token works without curl.
func checkToken(args []string) int {
	fs := flag.NewFlagSet("check-token", flag.ExitOnError)
	baseURL := fs.String("base-url", "", "Connect base URL")
	_ = fs.Parse(args)
	raw, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
	if err != nil || *baseURL == "" {
		fmt.Fprintln(os.Stderr, "usage: connect-fake check-token -base-url URL < token")
		return 2
	}
	body := `{"user_id":"johnsmith6000","first_name":"john","last_name":"smith","phone_number":"800-555-0100"}`
	req, err := http.NewRequest(http.MethodPost, strings.TrimRight(*baseURL, "/")+connectfake.PathUsers, strings.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(raw)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	resp.Body.Close()
	fmt.Printf("POST %s -> HTTP %s\n", connectfake.PathUsers, resp.Status)
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

// authorize asks a running fake (admin API) for a single-use authorization
// code, as Instacart's account-linking flow would hand one to the retailer.
func authorize(args []string) int {
	fs := flag.NewFlagSet("authorize", flag.ExitOnError)
	baseURL := fs.String("base-url", "", "fake base URL")
	clientID := fs.String("client-id", "demo-client", "application the code is for")
	redirectURI := fs.String("redirect-uri", "", "redirect URI the code is bound to")
	userID := fs.String("user-id", "", "linked user")
	_ = fs.Parse(args)
	body, _ := json.Marshal(map[string]string{"client_id": *clientID, "redirect_uri": *redirectURI, "user_id": *userID})
	resp, err := http.Post(strings.TrimRight(*baseURL, "/")+"/_fake/authorize", "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer resp.Body.Close()
	var out struct {
		Code string `json:"code"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Code == "" {
		fmt.Fprintf(os.Stderr, "authorize: HTTP %s\n", resp.Status)
		return 1
	}
	fmt.Println(out.Code)
	return 0
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
