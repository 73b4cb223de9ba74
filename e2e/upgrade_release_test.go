//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

const (
	// previousRelease is the last release, built from its commit in this
	// repository's history (a fresh clone has it; a shallow one does not).
	previousRelease       = "v0.1.0"
	previousReleaseCommit = "449a17748c512e7acb172ca293da18c77174794d" // 2026-11-26
	// upgradeLifetime is how long the fake's tokens live in the upgrade
	// test: long enough to read them all again after the upgrade, short
	// enough that waiting for them to expire costs little.
	upgradeLifetime = 20 * time.Second
	upgradeUsers    = 50
)

// previousReleasePlugin builds the plugin of previousRelease from its commit,
// with that release's own Makefile (make plugin VERSION=v0.1.0), and returns
// the binary. It is cached under .bin/e2e-releases/, named by the commit, so
// later runs skip the build.
func previousReleasePlugin(t *testing.T) string {
	t.Helper()
	cached := filepath.Join(repoRoot, ".bin", "e2e-releases", pluginName+"-"+previousRelease+"-"+previousReleaseCommit[:12])
	if _, err := os.Stat(cached); err == nil {
		return cached
	}
	if out, err := exec.Command("git", "-C", repoRoot, "cat-file", "-e", previousReleaseCommit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("the %s commit %s is not in this clone's history (a shallow clone? `git fetch --unshallow`): %v %s", previousRelease, previousReleaseCommit, err, out)
	}
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := os.Mkdir(src, 0o700); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(tmp, "src.tar")
	for _, args := range [][]string{
		{"git", "-C", repoRoot, "archive", "-o", tarball, previousReleaseCommit},
		{"tar", "-xf", tarball, "-C", src},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	started := time.Now()
	bin := filepath.Join(tmp, "bin")
	cmd := exec.Command("make", "plugin", "VERSION="+previousRelease, "BIN="+bin)
	cmd.Dir = src
	cmd.Env = makeEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s (%s): make plugin: %v\n%s", previousRelease, previousReleaseCommit[:12], err, out)
	}
	t.Logf("built %s from %s in %s", previousRelease, previousReleaseCommit[:12], time.Since(started).Round(100*time.Millisecond))
	// The release's Makefile names the file without a version. The cache
	// is written under a name of this run's own, then renamed, so a
	// concurrent run never sees half a file.
	tmpName := fmt.Sprintf("%s.tmp-%d", cached, os.Getpid())
	copyFile(t, filepath.Join(bin, "plugins", pluginName), tmpName)
	if err := os.Rename(tmpName, cached); err != nil {
		t.Fatal(err)
	}
	return cached
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeKeepsPreviousReleaseTokens runs the previous release (v0.1.0,
// built from its commit) with per-user and role-wide shared tokens in its
// storage, upgrades the mount in place to this tree's plugin as the README's
// Upgrade section does (register, tune, reload), and shows that the tokens
// the old release stored are still the engine's: every user and role reads
// the same token again without a request to Connect, a new user mints once,
// a flush revokes the old release's tokens at Connect and drops them, and,
// once they have expired, tidy removes the rest: nothing is left under
// either token layout.
func TestUpgradeKeepsPreviousReleaseTokens(t *testing.T) {
	started := time.Now()
	oldBin := previousReleasePlugin(t)
	plugins, err := os.MkdirTemp(suiteTmp, "plugins-upgrade-")
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, oldBin, filepath.Join(plugins, pluginFile(previousRelease)))
	copyFile(t, filepath.Join(pluginDir, pluginFile(newVersion)), filepath.Join(plugins, pluginFile(newVersion)))
	sha := func(version string) string {
		sum, err := stack.FileSHA256(filepath.Join(plugins, pluginFile(version)))
		check(t, err)
		return sum
	}

	f := startFake(t, upgradeLifetime)
	v := startDevVaultWithPlugins(t, plugins)
	v.vault(t, "plugin", "register", "-sha256="+sha(previousRelease), "-version="+previousRelease, "-command="+pluginFile(previousRelease), "secret", pluginName)
	v.vault(t, "secrets", "enable", "-path=instacart", "-plugin-version="+previousRelease, pluginName)
	v.vault(t, "write", "instacart/config", "client_id="+fakeClient, "client_secret=@"+f.SecretFile(), "base_url="+f.URL)
	assertRunning(t, v, previousRelease, sha(previousRelease))
	// Two roles of each kind: one is tidied after expiry, the other flushed.
	// min_remaining_ttl=1s keeps the short-lived tokens in service until
	// just before they expire.
	for _, r := range [][]string{
		{"shoppers", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=shopper-*"},
		{"pickers", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=picker-*"},
		{"fleet", "grant_type=client_credentials", "scopes=connect:fulfillment"},
		{"dispatch", "grant_type=client_credentials", "scopes=connect:fulfillment"},
	} {
		v.vault(t, append([]string{"write", "instacart/roles/" + r[0], "min_remaining_ttl=1s"}, r[1:]...)...)
	}
	check(t, f.Reset()) // the config's verify token belongs to no role

	shoppers := make([]string, upgradeUsers)
	for i := range shoppers {
		shoppers[i] = fmt.Sprintf("shopper-%03d", i)
	}
	pickers := []string{"picker-0", "picker-1", "picker-2", "picker-3", "picker-4"}
	var issued tokenSet
	var lastExpiry time.Time
	note := func(c userCreds) {
		issued.add(c.token)
		if c.expiresAt.After(lastExpiry) {
			lastExpiry = c.expiresAt
		}
	}
	readUsers := func(t *testing.T, role string, users []string) []userCreds {
		t.Helper()
		got, failed, err := readManyUsers(v, role, users, 8)
		if failed != 0 {
			t.Fatalf("%d of %d reads of creds/%s failed; the first: %v", failed, len(users), role, err)
		}
		for _, c := range got {
			note(c)
		}
		return got
	}
	readRole := func(t *testing.T, role string) creds {
		t.Helper()
		var c creds
		v.mustAPI(t, http.MethodGet, "instacart/creds/"+role, nil, &c)
		note(userCreds{token: c.Data.AccessToken, expiresAt: c.expiresAt(t)})
		return c
	}
	tokenRequests := func(t *testing.T) int { t.Helper(); return f.Stats(t).Requests[pathToken] }

	// The previous release mints and stores every token.
	before := map[string][]userCreds{"shoppers": readUsers(t, "shoppers", shoppers), "pickers": readUsers(t, "pickers", pickers)}
	fleet, dispatch := readRole(t, "fleet"), readRole(t, "dispatch")
	wantRequests := upgradeUsers + len(pickers) + 2
	if got := tokenRequests(t); got != wantRequests {
		t.Fatalf("v0.1.0 made %d token requests for %d users and 2 roles, want one each", got, wantRequests)
	}
	// The premise: v0.1.0 stored them in its layout, tokens/<role>/user-<sha256 hex>.
	for role, users := range map[string][]string{"shoppers": shoppers, "pickers": pickers} {
		var want []string
		for _, u := range users {
			sum := sha256.Sum256([]byte(u))
			want = append(want, "tokens/"+role+"/user-"+hex.EncodeToString(sum[:]))
		}
		got := storedTokenKeys(t, v, "instacart", role)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("v0.1.0 stored %d keys for %s (%v...), not its per-user layout", len(got), role, got[:min(len(got), 3)])
		}
	}

	// The upgrade, as the README's Upgrade section does it.
	v.vault(t, "plugin", "register", "-sha256="+sha(newVersion), "-version="+newVersion, "-command="+pluginFile(newVersion), "secret", pluginName)
	v.vault(t, "secrets", "tune", "-plugin-version="+newVersion, "instacart/")
	v.vault(t, "plugin", "reload", "-type=secret", "-plugin="+pluginName, "-scope=global")
	waitFor(t, 30*time.Second, "the mount to run "+newVersion, func() bool {
		return strings.TrimSpace(v.vault(t, "read", "-field=running_plugin_version", "sys/mounts/instacart")) == newVersion
	})
	assertRunning(t, v, newVersion, sha(newVersion))
	upgraded := time.Now()

	t.Run("the same tokens are served, without a request to Connect", func(t *testing.T) {
		n := tokenRequests(t)
		for role, users := range map[string][]string{"shoppers": shoppers, "pickers": pickers} {
			again := readUsers(t, role, users)
			changed := 0
			for i := range users {
				if again[i].token != before[role][i].token {
					changed++
				}
			}
			if changed != 0 {
				t.Errorf("%s: %d of %d users got a different token after the upgrade", role, changed, len(users))
			}
		}
		for _, c := range []struct {
			role string
			was  creds
		}{{"fleet", fleet}, {"dispatch", dispatch}} {
			if readRole(t, c.role).Data.AccessToken != c.was.Data.AccessToken {
				t.Errorf("%s: a different role-wide token after the upgrade", c.role)
			}
		}
		if got := tokenRequests(t); got != n {
			t.Errorf("%d token requests at Connect for tokens the previous release stored, want none", got-n)
		}
		m := freshMetrics(t, v)
		for role, want := range map[string]float64{"shoppers": upgradeUsers, "pickers": float64(len(pickers)), "fleet": 1, "dispatch": 1} {
			if g := sharedTokensGauge(m, role); g != want {
				t.Errorf("instacart_shared_tokens{role=%s} = %v after the upgrade, want %v", role, g, want)
			}
		}
	})

	t.Run("a new user mints once", func(t *testing.T) {
		n := tokenRequests(t)
		first := readUsers(t, "shoppers", []string{"shopper-new"})[0]
		second := readUsers(t, "shoppers", []string{"shopper-new"})[0]
		if got := tokenRequests(t); got != n+1 {
			t.Errorf("%d token requests for a new user read twice, want 1", got-n)
		}
		if first.token != second.token {
			t.Error("the new user's second read got another token")
		}
		if slices.ContainsFunc(before["shoppers"], func(c userCreds) bool { return c.token == first.token }) {
			t.Error("the new user got another user's token")
		}
	})

	t.Run("a flush revokes the previous release's tokens", func(t *testing.T) {
		revokedBefore := f.Stats(t).Revocations
		var users, role flushAnswer
		v.mustAPI(t, http.MethodDelete, "instacart/cache/pickers", nil, &users)
		v.mustAPI(t, http.MethodDelete, "instacart/cache/dispatch", nil, &role)
		if users.Data != (flushCounts{Revoked: len(pickers)}) || role.Data != (flushCounts{Revoked: 1}) {
			t.Errorf("flush answers: pickers %+v, dispatch %+v; want %d and 1 revoked, nothing else", users.Data, role.Data, len(pickers))
		}
		if got := f.Stats(t).Revocations - revokedBefore; got != len(pickers)+1 {
			t.Errorf("Connect revoked %d tokens, want %d", got, len(pickers)+1)
		}
		for i, c := range append(slices.Clone(before["pickers"]), userCreds{token: dispatch.Data.AccessToken}) {
			if info := f.tokenInfo(t, c.token); !info.Revoked || info.Live {
				t.Errorf("flushed token #%d: revoked %v, live %v at Connect", i, info.Revoked, info.Live)
			}
		}
		for _, r := range []string{"pickers", "dispatch"} {
			if keys := storedTokenKeys(t, v, "instacart", r); len(keys) != 0 {
				t.Errorf("%d tokens still stored for %s after its flush (e.g. %s), want none under either layout", len(keys), r, keys[0])
			}
		}
		// The next reads mint fresh tokens: the flushed ones are not
		// found again in either layout.
		n := tokenRequests(t)
		again := readUsers(t, "pickers", pickers[:1])[0]
		if again.token == before["pickers"][0].token {
			t.Error("a flushed user's token was served again")
		}
		if readRole(t, "dispatch").Data.AccessToken == dispatch.Data.AccessToken {
			t.Error("the flushed role-wide token was served again")
		}
		if got := tokenRequests(t); got != n+2 {
			t.Errorf("%d token requests for a flushed user and role, want 2", got-n)
		}
	})

	t.Run("tidy removes every expired token, in either layout", func(t *testing.T) {
		// Stored now: the 50 shoppers and the new one (tidied below), the
		// fleet token, and one picker's and dispatch's, minted after the
		// flush.
		// Counted by the engine (the gauge), not by storage keys: a lazy
		// migration may hold a token under both layouts for a while.
		want := map[string]int{"shoppers": upgradeUsers + 1, "fleet": 1, "pickers": 1, "dispatch": 1}
		total := 0
		m := freshMetrics(t, v)
		for role, n := range want {
			if g := sharedTokensGauge(m, role); g != float64(n) {
				t.Errorf("instacart_shared_tokens{role=%s} = %v before tidy, want %d", role, g, n)
			}
			total += n
		}
		wait := time.Until(lastExpiry.Add(time.Second))
		t.Logf("waiting %s for the last token to expire (upgraded %s ago)", wait.Round(100*time.Millisecond), time.Since(upgraded).Round(time.Second))
		time.Sleep(wait)
		tick, tidyStart := firstRollbackTick(t, v), time.Now()
		tt := tidyUntilDone(t, v, 2*time.Minute)
		t.Logf("tidy started %s before Vault's first rollback tick", tick.Sub(tidyStart).Round(100*time.Millisecond))
		if tt.expired != total || tt.orphaned != 0 {
			t.Errorf("tidy removed %d expired and %d orphaned tokens, want %d expired (%v) and none orphaned%s", tt.expired, tt.orphaned, total, want, periodicTidyNote(tick, tidyStart))
		}
		uuid, err := v.MountUUID("instacart")
		check(t, err)
		for _, layout := range tokenLayouts {
			if keys := rawWalk(t, v, "logical/"+uuid+"/", layout); len(keys) != 0 {
				t.Errorf("%d keys left under %s after tidy (e.g. %s), want none", len(keys), layout, keys[0])
			}
		}
		m = freshMetrics(t, v)
		for role := range want {
			if g := sharedTokensGauge(m, role); g != 0 {
				t.Errorf("instacart_shared_tokens{role=%s} = %v after tidy, want 0", role, g)
			}
		}
	})
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), issued.all())
	t.Logf("TestUpgradeKeepsPreviousReleaseTokens took %s", time.Since(started).Round(100*time.Millisecond))
}

// assertRunning checks that the mount instacart/ runs version, from the file
// whose sha256 is sum.
func assertRunning(t *testing.T, v *vault, version, sum string) {
	t.Helper()
	var m struct {
		Data struct {
			PluginVersion        string `json:"plugin_version"`
			RunningPluginVersion string `json:"running_plugin_version"`
			RunningSHA256        string `json:"running_sha256"`
		} `json:"data"`
	}
	v.vaultJSON(t, &m, "read", "sys/mounts/instacart")
	if m.Data.PluginVersion != version || m.Data.RunningPluginVersion != version || m.Data.RunningSHA256 != sum {
		t.Fatalf("the mount is %+v, want %s running the file with sha256 %s", m.Data, version, sum)
	}
}
