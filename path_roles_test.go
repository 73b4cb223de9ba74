package instacart

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRoleCRUD(t *testing.T) {
	e := newTestEnv(t)
	roles := map[string]map[string]any{
		"cc":      {"grant_type": "client_credentials", "scopes": "connect:fulfillment,connect:ian", "ttl": "1h", "max_ttl": "2h"},
		"cc-all":  {"grant_type": "client_credentials"},
		"shopper": {"grant_type": "fulfillment_user_assertion", "scopes": []string{"connect:recommendations"}, "user_id": "kamal"},
		"many":    {"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "store-*,vip"},
		"link":    {"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": "https://example.com/cb"},
	}
	for name, data := range roles {
		e.mustOK(logical.UpdateOperation, "roles/"+name, data)
	}

	list := e.mustOK(logical.ListOperation, "roles/", nil)
	if got := list.Data["keys"].([]string); !reflect.DeepEqual(got, []string{"cc", "cc-all", "link", "many", "shopper"}) {
		t.Errorf("list = %v", got)
	}

	tests := map[string]map[string]any{
		"cc": {"grant_type": "client_credentials", "scopes": []string{"connect:fulfillment", "connect:ian"}, "token_reuse": "shared",
			"min_remaining_ttl": int64(3600), "ttl": int64(3600), "max_ttl": int64(7200)},
		"cc-all": {"grant_type": "client_credentials", "scopes": []string{}, "token_reuse": "shared",
			"min_remaining_ttl": int64(3600), "ttl": int64(0), "max_ttl": int64(0)},
		"shopper": {"grant_type": "fulfillment_user_assertion", "scopes": []string{"connect:recommendations"}, "token_reuse": "shared",
			"user_id": "kamal", "allowed_user_ids": []string{}, "min_remaining_ttl": int64(3600), "ttl": int64(0), "max_ttl": int64(0)},
		"many": {"grant_type": "fulfillment_user_assertion", "scopes": []string{"connect:recommendations"}, "token_reuse": "shared",
			"user_id": "", "allowed_user_ids": []string{"store-*", "vip"}, "min_remaining_ttl": int64(3600), "ttl": int64(0), "max_ttl": int64(0)},
		"link": {"grant_type": "authorization_code", "scopes": []string{"account_linking"}, "token_reuse": "exclusive",
			"redirect_uri": "https://example.com/cb", "min_remaining_ttl": int64(3600), "ttl": int64(0), "max_ttl": int64(0)},
	}
	for name, want := range tests {
		resp := e.mustOK(logical.ReadOperation, "roles/"+name, nil)
		if !reflect.DeepEqual(resp.Data, want) {
			t.Errorf("read %s = %#v\nwant %#v", name, resp.Data, want)
		}
	}

	// Partial update keeps the other fields.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"ttl": "30m"})
	resp := e.mustOK(logical.ReadOperation, "roles/cc", nil)
	if resp.Data["ttl"] != int64(1800) || resp.Data["max_ttl"] != int64(7200) || len(resp.Data["scopes"].([]string)) != 2 {
		t.Errorf("after partial update: %v", resp.Data)
	}

	e.mustOK(logical.DeleteOperation, "roles/cc", nil)
	if resp, err := e.do(logical.ReadOperation, "roles/cc", nil); err != nil || resp != nil {
		t.Errorf("read after delete: %v %v", resp, err)
	}
}

func TestRoleValidation(t *testing.T) {
	tests := []struct {
		name     string
		existing map[string]any // written first, to test updates
		data     map[string]any
		field    string
	}{
		{name: "missing grant", data: map[string]any{"scopes": "connect:fulfillment"}, field: "grant_type"},
		{name: "unknown grant", data: map[string]any{"grant_type": "password"}, field: "grant_type"},
		{name: "grant change", existing: map[string]any{"grant_type": "client_credentials"}, data: map[string]any{"grant_type": "authorization_code"}, field: "grant_type"},
		{name: "linking scope on cc", data: map[string]any{"grant_type": "client_credentials", "scopes": "account_linking"}, field: "scopes"},
		{name: "recommendations on cc", data: map[string]any{"grant_type": "client_credentials", "scopes": "connect:recommendations"}, field: "scopes"},
		{name: "fulfillment on assertion", data: map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:fulfillment", "user_id": "u"}, field: "scopes"},
		{name: "assertion without scopes", data: map[string]any{"grant_type": "fulfillment_user_assertion", "user_id": "u"}, field: "scopes"},
		{name: "scope with space", data: map[string]any{"grant_type": "client_credentials", "scopes": []string{"connect:fulfillment connect:ian"}}, field: "scopes"},
		{name: "duplicate scope", data: map[string]any{"grant_type": "client_credentials", "scopes": "connect:ian,connect:ian"}, field: "scopes"},
		{name: "assertion without user", data: map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations"}, field: "user_id"},
		{name: "assertion with both", data: map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": "u", "allowed_user_ids": "*"}, field: "user_id"},
		{name: "user_id too long", data: map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": strings.Repeat("x", 10000)}, field: "user_id"},
		{name: "user_id on cc", data: map[string]any{"grant_type": "client_credentials", "user_id": "u"}, field: "user_id"},
		{name: "allowed_user_ids on cc", data: map[string]any{"grant_type": "client_credentials", "allowed_user_ids": "*"}, field: "allowed_user_ids"},
		{name: "redirect on cc", data: map[string]any{"grant_type": "client_credentials", "redirect_uri": "https://example.com"}, field: "redirect_uri"},
		{name: "code without redirect", data: map[string]any{"grant_type": "authorization_code", "scopes": "account_linking"}, field: "redirect_uri"},
		{name: "relative redirect", data: map[string]any{"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": "/cb"}, field: "redirect_uri"},
		{name: "http redirect", data: map[string]any{"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": "http://example.com/cb"}, field: "redirect_uri"},
		{name: "shared code role", data: map[string]any{"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": "https://example.com/cb", "token_reuse": "shared"}, field: "token_reuse"},
		{name: "bad reuse", data: map[string]any{"grant_type": "client_credentials", "token_reuse": "sometimes"}, field: "token_reuse"},
		{name: "negative ttl", data: map[string]any{"grant_type": "client_credentials", "ttl": -1}, field: "ttl"},
		{name: "negative min_remaining_ttl", data: map[string]any{"grant_type": "client_credentials", "min_remaining_ttl": -1}, field: "min_remaining_ttl"},
		{name: "ttl over max_ttl", data: map[string]any{"grant_type": "client_credentials", "ttl": "2h", "max_ttl": "1h"}, field: "max_ttl"},
		{name: "bad duration", data: map[string]any{"grant_type": "client_credentials", "ttl": "forever"}, field: "ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			if tc.existing != nil {
				e.mustOK(logical.UpdateOperation, "roles/r", tc.existing)
			}
			before := e.storageSnapshot()
			resp, err := e.do(logical.UpdateOperation, "roles/r", tc.data)
			expectError(t, resp, err, tc.field)
			if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("storage changed by a rejected write: %v", slices.Sorted(maps.Keys(after)))
			}
		})
	}
}

func TestRoleNames(t *testing.T) {
	e := newTestEnv(t)
	for _, name := range []string{"a", "my-role", "my_role.v2", "R2D2"} {
		e.mustOK(logical.UpdateOperation, "roles/"+name, map[string]any{"grant_type": "client_credentials"})
	}
	for _, name := range []string{"a/b", "-lead", "trail.", "ünï", "sp ace", strings.Repeat("x", 129)} {
		before := e.storageSnapshot()
		resp, err := e.do(logical.UpdateOperation, "roles/"+name, map[string]any{"grant_type": "client_credentials"})
		expectError(t, resp, err, "name")
		if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
			t.Errorf("%q: storage changed", name)
		}
	}
}

// A write to roles/ with no name lands on the list path, which takes no
// write: Vault answers 405 and nothing is stored (FuzzRoleWrite's CI find,
// until now held only by its corpus seed testdata/fuzz/FuzzRoleWrite/empty-name).
func TestRoleWriteWithoutANameIsRefused(t *testing.T) {
	e := newTestEnv(t)
	for _, op := range []logical.Operation{logical.CreateOperation, logical.UpdateOperation} {
		before := e.storageSnapshot()
		resp, err := e.do(op, "roles/", map[string]any{"grant_type": "client_credentials"})
		if !errors.Is(err, logical.ErrUnsupportedOperation) {
			t.Errorf("%s roles/: got %v, %v; want unsupported operation (405)", op, resp, err)
		}
		if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
			t.Errorf("%s roles/ changed storage: %v", op, slices.Sorted(maps.Keys(after)))
		}
	}
}

func TestUnknownScopeIsAcceptedWithWarning(t *testing.T) {
	e := newTestEnv(t)
	resp := e.mustOK(logical.UpdateOperation, "roles/r", map[string]any{"grant_type": "client_credentials", "scopes": "connect:future_api"})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "connect:future_api") {
		t.Errorf("want one warning naming the scope, got %v", resp)
	}
}
