package connect_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A plugin logs at trace level whatever Vault's level, and every line
// crosses to Vault: a call that succeeds at once logs nothing, and a retry
// logs one debug line, without the request's content.
func TestLogsRetriesOnly(t *testing.T) {
	fake := newFake(t)
	out := &lockedBuffer{}
	c := newClient(t, fake, func(cfg *connect.Config) {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: out})
	})
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); s != "" {
		t.Errorf("a call that succeeded at once logged:\n%s", s)
	}

	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503})
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if n := strings.Count(s, "retrying a Connect request"); n != 1 || !strings.Contains(s, "previous_status=503") || !strings.Contains(s, "attempt=2") {
		t.Errorf("one retry after a 503 logged %d retry lines:\n%s", n, s)
	}
	if strings.Contains(s, testSecret) || strings.Contains(s, testClientID) {
		t.Error("the retry line names the credentials")
	}
}
