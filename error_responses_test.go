package instacart

import (
	"net/http"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A deadline on a Connect call is a 504, as the Errors table promises.
func TestConnectDeadlineIs504(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 0})
	for _, role := range []string{"cc", "cc-excl"} {
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
		_, err := e.do(logical.ReadOperation, "creds/"+role, nil)
		if got := codedStatus(err); got != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d (%v), want 504", role, got, err)
		}
	}
}
