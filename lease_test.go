package instacart

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestLeaseCappedByRoleTTLsWithOneWarningEach(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)

	resp := e.mustOK(logical.ReadOperation, "creds/cc-capped", nil)
	if resp.Secret.TTL != time.Hour || resp.Secret.MaxTTL != 2*time.Hour {
		t.Errorf("role caps: ttl %v max %v", resp.Secret.TTL, resp.Secret.MaxTTL)
	}
	if len(resp.Warnings) != 2 || !strings.Contains(resp.Warnings[0], "max_ttl") || !strings.Contains(resp.Warnings[1], "role's ttl") {
		t.Errorf("warnings = %q", resp.Warnings)
	}

	// Uncapped: the lease is the token's remaining life, no warnings. The
	// mount's max_lease_ttl is Vault's to apply when it registers the lease
	// (see e2e "lease caps"), so the backend never asks for it per read.
	e.sys.MaxLeaseTTLVal = 30 * time.Minute
	resp = e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if len(resp.Warnings) != 0 || resp.Secret.TTL < 24*time.Hour-2*time.Second {
		t.Errorf("uncapped: ttl %v warnings %q", resp.Secret.TTL, resp.Warnings)
	}
}

func TestLeaseTTLTracksSharedTokenAge(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	e.advance(5 * time.Hour)
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if want := 19 * time.Hour; resp.Secret.TTL > want+2*time.Second || resp.Secret.TTL < want-2*time.Second {
		t.Errorf("lease of a 5h-old shared token: %v, want about %v", resp.Secret.TTL, want)
	}
	if e.fake.Mints() != 1 {
		t.Errorf("mints = %d", e.fake.Mints())
	}
}
