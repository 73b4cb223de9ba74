package instacart

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A code is sent to Connect once: a second use (a client's retry, a replay)
// is refused here, without asking Connect, naming the field.
func TestAuthorizationCodeIsSingleUse(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
	e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	before := e.storageSnapshot()
	resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	expectError(t, resp, err, "code: this authorization code was already sent")
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw the code %d times, want once", got)
	}
	if !reflect.DeepEqual(before, e.storageSnapshot()) {
		t.Error("a refused code changed storage")
	}
	// A code Connect itself refuses (never issued) is still Connect's to judge.
	resp, err = e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": "never-issued"})
	expectError(t, resp, err, "invalid_grant")
	// Records of sent codes are pruned once no code could still be valid:
	// with the whole hour they were sent in past the TTL.
	e.advance(codeRecordTTL + codeBucketSpan)
	if err := e.b.pruneCodes(context.Background(), e.storage); err != nil {
		t.Fatal(err)
	}
	for k := range e.storageSnapshot() {
		if strings.HasPrefix(k, codeStoragePrefix) {
			t.Errorf("code record %s outlived its TTL", k)
		}
	}
}

// An authorization code is single-use: once a request carrying it reached
// Connect and the answer was lost, it is not sent again, and the caller is
// told to get a new code.
func TestAuthorizationCodeIsNeverSentTwice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  connectfake.Fault
		status int
	}{
		{"reset after Connect processed it", connectfake.Fault{AfterHandling: true, Reset: true}, http.StatusBadGateway},
		{"500 after Connect processed it", connectfake.Fault{AfterHandling: true, Status: 500}, http.StatusBadGateway},
		{"no answer in time", connectfake.Fault{AfterHandling: true, Hang: true}, http.StatusGatewayTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 3})
			e.fake.ResetCounters()
			code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
			e.fake.InjectFaults(connectfake.PathToken, tc.fault)

			_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			if got := codedStatus(err); got != tc.status {
				t.Fatalf("status %d (%v), want %d", got, err, tc.status)
			}
			if !strings.Contains(err.Error(), "new code") {
				t.Errorf("error does not tell the caller to get a new code: %v", err)
			}
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("the code was sent %d times, want once", got)
			}
			// A client retrying the failed write (the Vault CLI retries 5xx
			// answers by itself) gets a 400; Connect never sees it again.
			resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			expectError(t, resp, err, "already sent")
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("a retry sent the code again (%d requests)", got)
			}
		})
	}

	t.Run("a code Connect turned away (429/503 to the end) may be sent again", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1})
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 429, RetryAfter: "0"})
		_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if codedStatus(err) != http.StatusBadGateway || strings.Contains(err.Error(), "new code") {
			t.Fatalf("err = %v, want a plain 502 (the code was not processed)", err)
		}
		e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	})

	t.Run("429 and 503 are retried: Connect did not process them", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "0"}, connectfake.Fault{Status: 503})
		resp := e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if usersStatus(t, e.fake.URL, resp.Data["access_token"].(string)) != 200 {
			t.Error("the linking token does not work")
		}
		if got := e.fake.Requests(connectfake.PathToken); got != 3 {
			t.Errorf("token requests = %d, want 3", got)
		}
	})

	t.Run("other grants still retry", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: 500})
		e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		if got := e.fake.Requests(connectfake.PathToken); got != 2 {
			t.Errorf("token requests = %d, want 2", got)
		}
	})
}

// countingStorage counts the storage calls made through it, by key, and
// fails the reads failGet says to.
type countingStorage struct {
	logical.Storage

	mu      sync.Mutex
	gets    []string
	lists   []string
	failGet func(key string) error
}

func (c *countingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	c.mu.Lock()
	c.gets = append(c.gets, key)
	fail := c.failGet
	c.mu.Unlock()
	if fail != nil {
		if err := fail(key); err != nil {
			return nil, err
		}
	}
	return c.Storage.Get(ctx, key)
}

func (c *countingStorage) List(ctx context.Context, prefix string) ([]string, error) {
	c.mu.Lock()
	c.lists = append(c.lists, prefix)
	c.mu.Unlock()
	return c.Storage.List(ctx, prefix)
}

// getsUnder counts the Get calls on keys under prefix.
func (c *countingStorage) getsUnder(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.gets {
		if strings.HasPrefix(k, prefix) {
			n++
		}
	}
	return n
}

func (c *countingStorage) listed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lists...)
}

func (c *countingStorage) reset() {
	c.mu.Lock()
	c.gets, c.lists = nil, nil
	c.mu.Unlock()
}

// codeClock sets the backend's clock to t and returns a function that moves
// it to another time.
func codeClock(e *testEnv, t time.Time) func(time.Time) {
	var mu sync.Mutex
	now := t
	e.b.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	return func(t time.Time) {
		mu.Lock()
		now = t
		mu.Unlock()
	}
}

// codeKeys returns the storage keys under codes/.
func codeKeys(e *testEnv) []string {
	var keys []string
	for k := range e.storageSnapshot() {
		if strings.HasPrefix(k, codeStoragePrefix) {
			keys = append(keys, k)
		}
	}
	return keys
}

func mustClaim(t *testing.T, e *testEnv, code string, want bool) {
	t.Helper()
	claimed, err := e.b.claimCode(context.Background(), e.storage, code)
	if err != nil {
		t.Fatal(err)
	}
	if claimed != want {
		t.Fatalf("claimCode = %v, want %v", claimed, want)
	}
}

func mustPruneCodes(t *testing.T, e *testEnv) {
	t.Helper()
	if err := e.b.pruneCodes(context.Background(), e.storage); err != nil {
		t.Fatal(err)
	}
}

// A claimed code is refused a second time, and its record lives in the
// bucket of the hour it was sent in, named by the code's hash.
func TestCodeClaimTwiceIsRefused(t *testing.T) {
	e := newTestEnv(t)
	sent := time.Date(2026, 3, 14, 10, 20, 0, 0, time.UTC)
	codeClock(e, sent)
	mustClaim(t, e, "code-a", true)
	mustClaim(t, e, "code-a", false)
	mustClaim(t, e, "code-b", true)
	want := map[string]bool{
		"codes/2026031410/" + codeHash("code-a"): true,
		"codes/2026031410/" + codeHash("code-b"): true,
	}
	got := codeKeys(e)
	if len(got) != len(want) {
		t.Fatalf("code records %v, want %v", got, want)
	}
	for _, k := range got {
		if !want[k] {
			t.Errorf("unexpected code record %s", k)
		}
		if strings.Contains(k, "code-") {
			t.Errorf("a code record names the code itself: %s", k)
		}
	}
}

// The bucket is named by the UTC hour whatever zone the clock reports.
func TestCodeBucketIsUTC(t *testing.T) {
	e := newTestEnv(t)
	codeClock(e, time.Date(2026, 3, 14, 10, 20, 0, 0, time.FixedZone("UTC+5", 5*3600)))
	mustClaim(t, e, "code-a", true)
	if got := codeKeys(e); len(got) != 1 || got[0] != "codes/2026031405/"+codeHash("code-a") {
		t.Errorf("code records %v, want one in bucket 2026031405", got)
	}
}

// A record from the previous hour still refuses the code while it is within
// its TTL, and neither refuses it nor survives pruning after.
func TestCodeRecordFromPreviousHour(t *testing.T) {
	e := newTestEnv(t)
	sent := time.Date(2026, 3, 14, 10, 50, 0, 0, time.UTC)
	set := codeClock(e, sent)
	mustClaim(t, e, "code-a", true)

	set(sent.Add(codeRecordTTL - time.Second)) // 11:49:59, another hour
	mustClaim(t, e, "code-a", false)
	mustPruneCodes(t, e) // bucket 10 may still hold live records: kept
	if got := codeKeys(e); len(got) != 1 {
		t.Fatalf("code records %v after pruning within the TTL, want the one", got)
	}

	set(sent.Add(codeRecordTTL)) // 11:50:00: the record no longer counts
	mustClaim(t, e, "code-a", true)
	mustClaim(t, e, "code-a", false) // the new record (bucket 11) does

	set(time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)) // bucket 10 wholly past the TTL
	mustPruneCodes(t, e)
	if got := codeKeys(e); len(got) != 1 || got[0] != "codes/2026031411/"+codeHash("code-a") {
		t.Errorf("code records %v, want only the one of hour 11", got)
	}
}

// Pruning 1,000 expired records reads none of them: the bucket is listed and
// its keys deleted.
func TestCodePruneDoesNotReadRecords(t *testing.T) {
	e := newTestEnv(t)
	counting := &countingStorage{Storage: e.storage}
	e.storage = counting
	sent := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	set := codeClock(e, sent)
	for i := range 1000 {
		set(sent.Add(time.Duration(i) * 3 * time.Second)) // 10:00:00 to 10:49:57
		mustClaim(t, e, fmt.Sprintf("code-%d", i), true)
	}
	set(time.Date(2026, 3, 14, 11, 30, 0, 0, time.UTC))
	mustClaim(t, e, "live-code", true) // bucket 11, still live

	set(time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)) // bucket 10 wholly past the TTL
	counting.reset()
	mustPruneCodes(t, e)
	if n := counting.getsUnder(codeStoragePrefix); n != 0 {
		t.Errorf("pruning made %d Get calls on code records, want none", n)
	}
	if got, want := counting.listed(), []string{codeStoragePrefix, codeStoragePrefix + "2026031410/"}; !reflect.DeepEqual(got, want) {
		t.Errorf("pruning listed %v, want %v", got, want)
	}
	if got := codeKeys(e); len(got) != 1 || got[0] != "codes/2026031411/"+codeHash("live-code") {
		t.Errorf("%d code records left (%v), want only the live one", len(got), got)
	}
	mustClaim(t, e, "live-code", false)
}

// A record the previous release wrote (codes/<sha256>) still refuses the
// code while within its TTL, and is pruned once past it.
func TestPreviousReleaseCodeRecordRefusesUntilItsTTL(t *testing.T) {
	e := newTestEnv(t)
	sent := time.Date(2026, 3, 14, 10, 50, 0, 0, time.UTC)
	set := codeClock(e, sent.Add(10*time.Minute))
	legacy := codeStoragePrefix + codeHash("old-code")
	if err := putJSON(context.Background(), e.storage, legacy, codeRecord{SentAt: sent}); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, e, "old-code", false)
	mustPruneCodes(t, e)
	if _, ok := e.storageSnapshot()[legacy]; !ok {
		t.Fatal("a legacy record within its TTL was pruned")
	}

	set(sent.Add(codeRecordTTL))
	mustPruneCodes(t, e)
	if got := codeKeys(e); len(got) != 0 {
		t.Errorf("code records %v after the legacy record's TTL, want none", got)
	}
	mustClaim(t, e, "old-code", true)
}

// A legacy record past its TTL does not refuse the code, even before the
// prune has removed it.
func TestCodeExpiredLegacyRecordDoesNotRefuse(t *testing.T) {
	e := newTestEnv(t)
	sent := time.Date(2026, 3, 14, 10, 50, 0, 0, time.UTC)
	codeClock(e, sent.Add(codeRecordTTL))
	if err := putJSON(context.Background(), e.storage, codeStoragePrefix+codeHash("old-code"), codeRecord{SentAt: sent}); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, e, "old-code", true)
	mustClaim(t, e, "old-code", false)
}

// A released code may be claimed again, also when the hour turned between
// the claim and the release.
func TestCodeReleaseAllowsReclaim(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration
	}{
		{"same hour", time.Second},
		{"next hour", 2 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			sent := time.Date(2026, 3, 14, 10, 59, 0, 0, time.UTC)
			set := codeClock(e, sent)
			mustClaim(t, e, "code-a", true)
			mustClaim(t, e, "code-b", true)
			set(sent.Add(tc.after))
			e.b.releaseCode(context.Background(), e.storage, "code-a")
			if got := codeKeys(e); len(got) != 1 || !strings.HasSuffix(got[0], codeHash("code-b")) {
				t.Errorf("code records %v after releasing code-a, want only code-b's", got)
			}
			mustClaim(t, e, "code-a", true)
			mustClaim(t, e, "code-a", false)
			mustClaim(t, e, "code-b", false) // another code's record is untouched
		})
	}
}

// Concurrent claims of one code: exactly one wins.
func TestOneOfConcurrentClaimsOfACodeWins(t *testing.T) {
	e := newTestEnv(t)
	const n = 16
	results := make(chan bool, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			claimed, err := e.b.claimCode(context.Background(), e.storage, "code-a")
			if err != nil {
				t.Error(err)
			}
			results <- claimed
		})
	}
	wg.Wait()
	close(results)
	won := 0
	for claimed := range results {
		if claimed {
			won++
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent claims of one code succeeded, want 1", won)
	}
}

// An authorization code is judged by the fate of the last attempt that
// carried it: a 503 that turned the first attempt away says nothing about a
// second attempt Connect processed and never answered in time.
func TestCodeJudgedByTheLastAttemptCarryingIt(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newConnectGate(t, e.fake)
	behindGate(e, g, map[string]any{"request_timeout": "1s", "max_retries": 1})
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")

	// Attempt 1 is turned away (503) before reaching Connect's handler;
	// attempt 2 is processed (the code is spent, a token minted) and its
	// answer never arrives within the per-attempt timeout.
	g.refuse(connectfake.PathToken, http.StatusServiceUnavailable)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Hang: true})

	_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	if status := codedStatus(err); status < 500 || status > 599 {
		t.Fatalf("first write: err = %v (status %d), want a 5xx", err, status)
	}
	if !strings.Contains(err.Error(), "new code") {
		t.Errorf("the error does not tell the caller to get a new code: %v", err)
	}
	carrying, processed := g.codeCounts(code)
	if carrying != 2 || processed != 1 {
		t.Fatalf("token requests carrying the code: %d (%d reached Connect), want 2 (1): one turned away, one processed", carrying, processed)
	}

	// The Vault client retries a 5xx by itself: the same code again.
	resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	expectError(t, resp, err, "already sent")
	if c, p := g.codeCounts(code); c != carrying || p != processed {
		t.Errorf("the retry sent the code again: %d requests carried it (%d reached Connect)", c, p)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("Connect minted %d tokens for the code, want 1", got)
	}
}

// An authorization code is released for another try only when Connect
// provably did not process it.
func TestCodeReleasedOnlyWhenConnectDidNotProcessIt(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fail makes the first write fail; restore undoes what it set up.
		fail, restore func(e *testEnv)
		released      bool
	}{
		{"400 invalid_grant: spent", func(e *testEnv) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusBadRequest,
				Body: `{"error":"invalid_grant","error_description":"The provided authorization grant is invalid."}`})
		}, func(*testEnv) {}, false},
		{"429 and no retry left: released", func(e *testEnv) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "0"})
		}, func(*testEnv) {}, true},
		{"connection refused: released", func(e *testEnv) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				e.t.Fatal(err)
			}
			closed := "http://" + ln.Addr().String()
			ln.Close()
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": closed, "client_secret": testSecret, "verify": false})
		}, func(e *testEnv) {
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": e.fake.URL, "client_secret": testSecret, "verify": false})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
			tc.fail(e)
			if o := outcomeOf(e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})); o.token() != "" {
				t.Fatal("the failing write produced a token")
			}
			tc.restore(e)
			before := e.fake.Requests(connectfake.PathToken)

			resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			sent := e.fake.Requests(connectfake.PathToken) - before
			if !tc.released {
				expectError(t, resp, err, "already sent")
				if sent != 0 {
					t.Errorf("a spent code was sent again (%d requests)", sent)
				}
				return
			}
			if sent != 1 {
				t.Errorf("the retry sent %d token requests, want 1: the code was never processed", sent)
			}
			if err != nil || resp == nil || resp.IsError() {
				t.Errorf("a retry with a code Connect never processed failed: %v %v", resp, err)
			}
		})
	}
}
