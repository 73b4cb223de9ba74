package instacart

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// As Vault runs it, a 502 answers with its status and Vault's error body
// holding the message alone, as a 400 reads, not an error Vault would wrap in
// "1 error occurred:"; a lease revocation's error stays an error, for Vault to
// retry.
func TestPluginAnswers502Plainly(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	served := plainErrors{e.b}
	faults := make([]connectfake.Fault, 10)
	for i := range faults {
		faults[i] = connectfake.Fault{Status: 503}
	}
	e.fake.InjectFaults(connectfake.PathToken, faults...)
	req := &logical.Request{Operation: logical.ReadOperation, Path: "creds/cc", Storage: e.storage}
	resp, err := served.HandleRequest(context.Background(), req)
	if err != nil || resp == nil {
		t.Fatalf("creds read with Connect down: %v, %v; want a raw 502 response", resp, err)
	}
	if got := resp.Data[logical.HTTPStatusCode]; got != http.StatusBadGateway {
		t.Errorf("status %v, want 502", got)
	}
	var body struct {
		Errors []string `json:"errors"`
	}
	if err := json.Unmarshal(resp.Data[logical.HTTPRawBody].([]byte), &body); err != nil {
		t.Fatalf("body: %v", err)
	}
	if len(body.Errors) != 1 || !strings.HasPrefix(body.Errors[0], "Instacart Connect is unavailable, try again later") {
		t.Errorf("errors %q, want the 502's message alone", body.Errors)
	}
	// The backend the unit tests drive still returns the coded error.
	_, err = e.b.HandleRequest(context.Background(), req)
	var coded logical.HTTPCodedError
	if !errors.As(err, &coded) || coded.Code() != http.StatusBadGateway {
		t.Errorf("backend's own answer: %v, want a coded 502", err)
	}

	// A lease revocation's error reaches Vault as an error.
	resp, err = plainCodedError(&logical.Request{Operation: logical.RevokeOperation}, nil, logical.CodedError(http.StatusServiceUnavailable, "not queued"))
	if err == nil || resp != nil {
		t.Errorf("revocation error became %v, %v", resp, err)
	}
	// So does a request that asks for a wrapped response, and an error
	// without a status.
	resp, err = plainCodedError(&logical.Request{Operation: logical.ReadOperation, WrapInfo: &logical.RequestWrapInfo{}}, nil, logical.CodedError(http.StatusBadGateway, "down"))
	if err == nil || resp != nil {
		t.Errorf("wrapped request's error became %v, %v", resp, err)
	}
	if _, err := plainCodedError(&logical.Request{Operation: logical.UpdateOperation}, nil, logical.ErrReadOnly); !errors.Is(err, logical.ErrReadOnly) {
		t.Errorf("ErrReadOnly became %v: Vault could not forward the write", err)
	}
}
