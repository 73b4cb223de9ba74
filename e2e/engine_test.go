//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const redirectURI = "https://retailer.example/instacart/callback"

// TestEngineInVault walks the engine through a dev Vault the way an operator
// and applications use it, with a file audit device enabled first, and then
// checks the audit log and every log for leaked secrets.
func TestEngineInVault(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	v.vault(t, "audit", "enable", "file", "file_path="+auditPath)

	var issued tokenSet
	issuances := 0 // creds responses, each must be in the audit log

	t.Run("registration", func(t *testing.T) {
		v.installPlugin(t, nil)
		out := v.vault(t, "plugin", "list", "secret")
		if !strings.Contains(out, pluginName) || !strings.Contains(out, oldVersion) {
			t.Errorf("plugin list does not show %s %s:\n%s", pluginName, oldVersion, out)
		}
		var mounts map[string]struct {
			Type                 string `json:"type"`
			RunningPluginVersion string `json:"running_plugin_version"`
			RunningPluginSHA256  string `json:"running_sha256"`
		}
		v.vaultJSON(t, &mounts, "secrets", "list", "-detailed")
		m := mounts["instacart/"]
		if m.Type != pluginName || m.RunningPluginVersion != oldVersion {
			t.Errorf("mount = %+v, want %s running %s", m, pluginName, oldVersion)
		}
		help := v.vault(t, "path-help", "instacart/creds/anything")
		for _, want := range []string{"Read a leased Instacart Connect token for a role", "user_id", "code", "lease"} {
			if !strings.Contains(help, want) {
				t.Errorf("path-help for creds does not mention %q:\n%s", want, help)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		v.vault(t, "write", "instacart/config", "client_id="+fakeClient, "client_secret=@"+f.SecretFile(), "base_url="+f.URL, "request_timeout=5s", "max_retries=2")
		var cfg struct {
			Data map[string]any `json:"data"`
		}
		v.vaultJSON(t, &cfg, "read", "instacart/config")
		want := map[string]any{"client_id": fakeClient, "client_secret_set": true, "base_url": f.URL, "request_timeout": float64(5), "max_retries": float64(2)}
		for k, w := range want {
			if cfg.Data[k] != w {
				t.Errorf("config %s = %v, want %v", k, cfg.Data[k], w)
			}
		}
		if _, ok := cfg.Data["client_secret"]; ok {
			t.Error("config read returns client_secret")
		}
		if st := f.Stats(t); st.Mints != 1 || st.Revocations != 1 {
			t.Errorf("verify: %d mints, %d revocations; want 1 and 1", st.Mints, st.Revocations)
		}
	})

	t.Run("roles", func(t *testing.T) {
		roles := map[string][]string{
			"fulfillment": {"grant_type=client_credentials", "scopes=connect:fulfillment"},
			"fulfillment-exclusive": {"grant_type=client_credentials", "scopes=connect:fulfillment,connect:ian",
				"token_reuse=exclusive"},
			"capped":  {"grant_type=client_credentials", "ttl=1h", "max_ttl=2h"},
			"shopper": {"grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "user_id=kamalsingh1234"},
			"shoppers": {"grant_type=fulfillment_user_assertion", "scopes=connect:recommendations,connect:post_checkout",
				"allowed_user_ids=store-*,vip-?"},
			"linking": {"grant_type=authorization_code", "scopes=account_linking", "redirect_uri=" + redirectURI},
		}
		for name, args := range roles {
			v.vault(t, append([]string{"write", "instacart/roles/" + name}, args...)...)
		}
		var list []string
		v.vaultJSON(t, &list, "list", "instacart/roles")
		if len(list) != len(roles) {
			t.Errorf("roles listed: %v", list)
		}
		var role struct {
			Data map[string]any `json:"data"`
		}
		v.vaultJSON(t, &role, "read", "instacart/roles/linking")
		if role.Data["token_reuse"] != "exclusive" || role.Data["redirect_uri"] != redirectURI || role.Data["grant_type"] != "authorization_code" {
			t.Errorf("linking role = %v", role.Data)
		}
	})

	var linkingLease, linkingToken string
	t.Run("creds for every grant", func(t *testing.T) {
		code := f.Authorize(t, redirectURI, "linked-user")
		tests := []struct {
			name      string
			args      []string
			scopes    string
			userID    string
			exclusive bool
		}{
			{"client_credentials", []string{"read", "instacart/creds/fulfillment"}, "connect:fulfillment", "", false},
			{"client_credentials exclusive", []string{"read", "instacart/creds/fulfillment-exclusive"}, "connect:fulfillment,connect:ian", "", true},
			{"assertion, fixed user", []string{"read", "instacart/creds/shopper"}, "connect:recommendations", "kamalsingh1234", false},
			{"assertion, caller's user", []string{"write", "instacart/creds/shoppers", "user_id=store-42"}, "connect:recommendations,connect:post_checkout", "store-42", false},
			{"authorization_code", []string{"write", "instacart/creds/linking", "code=" + code}, "account_linking", "", true},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				var c creds
				v.vaultJSON(t, &c, tc.args...)
				issuances++
				issued.add(c.Data.AccessToken)
				if strings.Join(c.Data.Scopes, ",") != tc.scopes || c.Data.TokenType != "Bearer" || c.Data.UserID != tc.userID {
					t.Errorf("data = %+v", c.Data)
				}
				if st := f.Users(t, c.Data.AccessToken); st != 200 {
					t.Errorf("Connect answered %d to the issued token", st)
				}
				remaining := time.Until(c.expiresAt(t)).Seconds()
				if d := float64(c.LeaseDuration) - remaining; d > 2 || d < -2 || !c.Renewable {
					t.Errorf("lease %ds renewable=%v, token has %.0fs left", c.LeaseDuration, c.Renewable, remaining)
				}
				if !strings.HasPrefix(c.LeaseID, "instacart/creds/") {
					t.Errorf("lease id %q", c.LeaseID)
				}
				if tc.name == "authorization_code" {
					linkingLease, linkingToken = c.LeaseID, c.Data.AccessToken
				}
			})
		}
	})

	t.Run("shared token is reused, lease per read", func(t *testing.T) {
		before := f.Mints(t)
		var a, b creds
		v.vaultJSON(t, &a, "read", "instacart/creds/fulfillment")
		v.vaultJSON(t, &b, "read", "instacart/creds/fulfillment")
		issuances += 2
		issued.add(a.Data.AccessToken)
		if a.Data.AccessToken != b.Data.AccessToken || a.LeaseID == b.LeaseID {
			t.Error("shared role: want the same token under two leases")
		}
		if got := f.Mints(t) - before; got != 0 {
			t.Errorf("cached reads minted %d tokens", got)
		}
	})

	t.Run("lease caps warn", func(t *testing.T) {
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/capped")
		issuances++
		issued.add(c.Data.AccessToken)
		if c.LeaseDuration != 3600 || len(c.Warnings) == 0 {
			t.Errorf("capped lease %ds warnings %v, want 3600s with a warning", c.LeaseDuration, c.Warnings)
		}
		// The mount's max lease TTL caps too, with Vault's own warning.
		v.vault(t, "secrets", "tune", "-max-lease-ttl=30m", "instacart/")
		defer v.vault(t, "secrets", "tune", "-max-lease-ttl=768h", "instacart/")
		var m creds
		v.vaultJSON(t, &m, "read", "instacart/creds/fulfillment")
		issuances++
		if m.LeaseDuration != 1800 || !strings.Contains(strings.Join(m.Warnings, " "), "max_ttl") {
			t.Errorf("mount-capped lease %ds warnings %v, want 1800s with a warning", m.LeaseDuration, m.Warnings)
		}
	})

	t.Run("renew stops at the token's expiry", func(t *testing.T) {
		f.SetLifetime(t, 120*time.Second)
		defer f.SetLifetime(t, 24*time.Hour)
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/fulfillment-exclusive")
		issuances++
		issued.add(c.Data.AccessToken)
		var renewed struct {
			LeaseDuration int `json:"lease_duration"`
		}
		v.vaultJSON(t, &renewed, "lease", "renew", "-increment=24h", c.LeaseID)
		remaining := time.Until(c.expiresAt(t)).Seconds()
		if float64(renewed.LeaseDuration) > remaining+1 || renewed.LeaseDuration < 100 {
			t.Errorf("renewed to %ds, token has %.0fs left", renewed.LeaseDuration, remaining)
		}
		var lookup struct {
			Data struct {
				ExpireTime time.Time `json:"expire_time"`
			} `json:"data"`
		}
		v.vaultJSON(t, &lookup, "lease", "lookup", c.LeaseID)
		if lookup.Data.ExpireTime.After(c.expiresAt(t)) {
			t.Errorf("lease expires %v, after the token (%v)", lookup.Data.ExpireTime, c.expiresAt(t))
		}
	})

	t.Run("revoke", func(t *testing.T) {
		before := f.Stats(t).Revocations
		v.vault(t, "lease", "revoke", "-sync", linkingLease)
		if st := f.Users(t, linkingToken); st != 401 {
			t.Errorf("revoked exclusive token: Connect answered %d, want 401", st)
		}
		if got := f.Stats(t).Revocations - before; got != 1 {
			t.Errorf("revocations upstream = %d, want 1", got)
		}

		// Shared leases revoke nothing upstream.
		var shared creds
		v.vaultJSON(t, &shared, "read", "instacart/creds/shopper")
		issuances++
		v.vault(t, "lease", "revoke", "-sync", shared.LeaseID)
		if st := f.Users(t, shared.Data.AccessToken); st != 200 {
			t.Errorf("revoking a shared lease killed the token (%d)", st)
		}

		// -prefix revokes every lease of the role, exclusive tokens upstream.
		var more creds
		v.vaultJSON(t, &more, "read", "instacart/creds/fulfillment-exclusive")
		issuances++
		issued.add(more.Data.AccessToken)
		v.vault(t, "lease", "revoke", "-sync", "-prefix", "instacart/creds/fulfillment-exclusive")
		if st := f.Users(t, more.Data.AccessToken); st != 401 {
			t.Errorf("token of a prefix-revoked lease still works (%d)", st)
		}
		if left := v.leases(t, "instacart/creds/fulfillment-exclusive/"); len(left) != 0 {
			t.Errorf("leases left after revoke -prefix: %v", left)
		}
	})

	t.Run("bad input through the CLI", func(t *testing.T) {
		tests := []struct {
			args  []string
			field string
		}{
			{[]string{"write", "instacart/roles/x", "grant_type=password"}, "grant_type"},
			{[]string{"write", "instacart/roles/x", "grant_type=client_credentials", "scopes=account_linking"}, "scopes"},
			{[]string{"write", "instacart/roles/x", "grant_type=client_credentials", "token_reuse=sometimes"}, "token_reuse"},
			{[]string{"write", "instacart/roles/x", "grant_type=client_credentials", "ttl=soon"}, "ttl"},
			{[]string{"write", "instacart/roles/x", "grant_type=client_credentials", "ttl=2h", "max_ttl=1h"}, "max_ttl"},
			{[]string{"write", "instacart/roles/x", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations"}, "user_id"},
			{[]string{"write", "instacart/roles/x", "grant_type=authorization_code", "scopes=account_linking", "redirect_uri=/relative"}, "redirect_uri"},
			{[]string{"write", "instacart/roles/x", "grant_type=authorization_code", "scopes=account_linking", "redirect_uri=" + redirectURI, "token_reuse=shared"}, "token_reuse"},
			{[]string{"write", "instacart/roles/bad name!", "grant_type=client_credentials"}, "name"},
			{[]string{"write", "instacart/roles/fulfillment", "grant_type=authorization_code"}, "grant_type"},
			{[]string{"write", "instacart/config", "base_url=http://connect.example.com"}, "base_url"},
			{[]string{"write", "instacart/config", "max_retries=-1"}, "max_retries"},
			{[]string{"write", "instacart/config", "request_timeout=forever"}, "request_timeout"},
			{[]string{"write", "instacart/creds/shoppers", "user_id=somebody-else"}, "user_id"},
			{[]string{"write", "-force", "instacart/creds/linking"}, "code"},
			{[]string{"read", "instacart/creds/no-such-role"}, "unknown role"},
		}
		for _, tc := range tests {
			out, errOut, code := v.cli(t, v.Token, "", tc.args...)
			if code == 0 {
				t.Errorf("vault %s: exit 0, want failure", strings.Join(tc.args, " "))
				continue
			}
			if !strings.Contains(errOut+out, tc.field) || !strings.Contains(errOut, "Code: 400") {
				t.Errorf("vault %s: message does not name %q with a 400:\n%s", strings.Join(tc.args, " "), tc.field, errOut)
			}
		}
		var role struct {
			Data map[string]any `json:"data"`
		}
		v.vaultJSON(t, &role, "read", "instacart/roles/fulfillment")
		if role.Data["grant_type"] != "client_credentials" {
			t.Errorf("a refused write changed the role: %v", role.Data)
		}
		if _, _, code := v.cli(t, v.Token, "", "read", "instacart/roles/x"); code == 0 {
			t.Error("a refused write created role x")
		}
	})

	t.Run("audit log", func(t *testing.T) {
		raw, err := os.ReadFile(auditPath)
		if err != nil {
			t.Fatal(err)
		}
		audit := string(raw)
		creds := 0
		sc := bufio.NewScanner(strings.NewReader(audit))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var entry struct {
				Type    string `json:"type"`
				Request struct {
					Path string `json:"path"`
				} `json:"request"`
				Response struct {
					Data map[string]any `json:"data"`
				} `json:"response"`
			}
			if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
				t.Fatalf("audit line is not JSON: %v", err)
			}
			if entry.Type == "response" && strings.HasPrefix(entry.Request.Path, "instacart/creds/") && entry.Response.Data["access_token"] != nil {
				creds++
				if tok, _ := entry.Response.Data["access_token"].(string); !strings.HasPrefix(tok, "hmac-sha256:") {
					t.Errorf("audit log holds an access token that is not HMAC'd")
				}
			}
		}
		if creds != issuances {
			t.Errorf("audit log records %d creds responses, the test issued %d", creds, issuances)
		}
		// The HMAC Vault logged is the one sys/audit-hash computes for the token.
		var hash struct {
			Data struct {
				Hash string `json:"hash"`
			} `json:"data"`
		}
		v.mustAPI(t, http.MethodPut, "sys/audit-hash/file", map[string]string{"input": linkingToken}, &hash)
		if hash.Data.Hash == "" || !strings.Contains(audit, hash.Data.Hash) {
			t.Errorf("sys/audit-hash of the linking token (%q) is not in the audit log", hash.Data.Hash)
		}
		assertNoSecrets(t, "audit log", audit, f.Secret(), issued.all())
	})

	t.Run("no secret in Vault's or the plugin's logs", func(t *testing.T) {
		assertNoSecrets(t, "Vault server log (with plugin output)", v.Log(t), f.Secret(), issued.all())
		assertNoSecrets(t, "Connect fake output", f.Output(t), f.Secret(), issued.all())
	})
}

// assertNoSecrets fails when text contains the client secret or any token.
func assertNoSecrets(t *testing.T, where, text, secret string, tokens []string) {
	t.Helper()
	if strings.Contains(text, secret) {
		t.Errorf("%s contains the client secret", where)
	}
	leaked := 0
	for _, tok := range tokens {
		if tok != "" && strings.Contains(text, tok) {
			leaked++
		}
	}
	if leaked > 0 {
		t.Errorf("%s contains %d of %d access tokens in plain text", where, leaked, len(tokens))
	}
	t.Logf("%s: %d bytes scanned for the secret and %d tokens: 0 hits expected, %d found", where, len(text), len(tokens), leaked)
}
