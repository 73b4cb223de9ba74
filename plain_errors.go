package instacart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"
)

// PluginFactory is Factory as the plugin binary serves it to Vault: its
// coded errors (502, 503, 504) read as its 400s do.
func PluginFactory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	lb, err := Factory(ctx, conf)
	if err != nil {
		return nil, err
	}
	b, ok := lb.(*backend)
	if !ok {
		return nil, fmt.Errorf("instacart Factory returned %T", lb)
	}
	return plainErrors{b}, nil
}

// plainErrors is the backend with HandleRequest answering coded errors
// plainly. Embedding *backend (not the logical.Backend interface) keeps the
// optional interfaces Vault looks for, such as PluginVersion.
type plainErrors struct{ *backend }

func (p plainErrors) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	resp, err := p.backend.HandleRequest(ctx, req)
	return plainCodedError(req, resp, err)
}

// plainCodedError answers a coded error of a request as Vault answers an
// error response. Vault's core collects a returned error in a multierror, so
// a 502 read "1 error occurred:\n\t* Instacart Connect is unavailable ...",
// while a 400 (logical.ErrorResponse) reads as written. A raw response with
// the error's status and Vault's own error body, {"errors": [...]}, reads
// like the 400s in the CLI and the API client. Left as they are: errors
// without a status (Vault's 500s, logical.ErrReadOnly, which Vault must see
// to forward a write), lease revocations and renewals and everything else
// Vault acts on itself (it retries a revocation that returned an error, and
// drops a revocation's response), and requests asking for a wrapped response
// (Vault would wrap the raw one and answer 200).
func plainCodedError(req *logical.Request, resp *logical.Response, err error) (*logical.Response, error) {
	var coded logical.HTTPCodedError
	if err == nil || req == nil || req.WrapInfo != nil || !errors.As(err, &coded) {
		return resp, err
	}
	switch req.Operation {
	case logical.ReadOperation, logical.CreateOperation, logical.UpdateOperation, logical.PatchOperation,
		logical.DeleteOperation, logical.ListOperation:
	default:
		return resp, err
	}
	body := struct {
		Errors   []string `json:"errors"`
		Warnings []string `json:"warnings,omitempty"`
	}{Errors: []string{err.Error()}}
	if resp != nil {
		body.Warnings = resp.Warnings
	}
	raw, jerr := json.Marshal(body)
	if jerr != nil {
		return resp, err
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPStatusCode:  coded.Code(),
		logical.HTTPContentType: "application/json",
		logical.HTTPRawBody:     raw,
	}}, nil
}
