package connectfake

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	testID     = "fake-test-client"
	testSecret = "fake-test-secret-000"
)

func newTestFake(t *testing.T) *Server {
	t.Helper()
	s := New()
	t.Cleanup(s.Close)
	s.AddClient(testID, testSecret)
	return s
}

// post sends a request and returns the status and decoded JSON body.
func post(t *testing.T, s *Server, path, query, contentType, body string, mod func(*http.Request)) (int, map[string]any) {
	t.Helper()
	u := s.URL + path
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if mod != nil {
		mod(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: body %q is not a JSON object", path, raw)
	}
	return resp.StatusCode, out
}

func jsonBody(kv map[string]string) string {
	b, _ := json.Marshal(kv)
	return string(b)
}

func TestTokenEndpointErrors(t *testing.T) {
	s := newTestFake(t)
	code := s.IssueAuthorizationCode(testID, "https://example.com/cb", "u1")
	creds := map[string]string{"client_id": testID, "client_secret": testSecret}
	with := func(extra map[string]string) string {
		m := map[string]string{}
		for k, v := range creds {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return jsonBody(m)
	}
	docSample := base64.StdEncoding.EncodeToString([]byte(`{ "user_id": kamalsingh1234}`))
	tests := []struct {
		name, query, body string
		status            int
		code              string
	}{
		{"credentials in query", "client_id=" + testID + "&client_secret=x", with(map[string]string{"grant_type": "client_credentials"}), 403, "query_params_forbidden"},
		{"wrong secret", "", jsonBody(map[string]string{"client_id": testID, "client_secret": "nope", "grant_type": "client_credentials"}), 401, "invalid_client"},
		{"no client", "", jsonBody(map[string]string{"grant_type": "client_credentials"}), 401, "invalid_client"},
		{"no grant", "", with(nil), 400, "invalid_request"},
		{"unknown grant", "", with(map[string]string{"grant_type": "password"}), 400, "unsupported_grant_type"},
		{"scope of another grant", "", with(map[string]string{"grant_type": "client_credentials", "scope": "connect:fulfillment,account_linking"}), 400, "invalid_scope"},
		{"no assertion", "", with(map[string]string{"grant_type": "fulfillment_user_assertion"}), 400, "invalid_grant"},
		{"documentation's sample assertion (not JSON)", "", with(map[string]string{"grant_type": "fulfillment_user_assertion", "assertion": docSample}), 400, "invalid_grant"},
		{"url-safe base64 assertion", "", with(map[string]string{"grant_type": "fulfillment_user_assertion", "assertion": base64.RawURLEncoding.EncodeToString([]byte(`{"user_id":"u?>"}`))}), 400, "invalid_grant"},
		{"code with wrong redirect", "", with(map[string]string{"grant_type": "authorization_code", "code": code, "redirect_uri": "https://evil.example/cb"}), 400, "invalid_grant"},
		{"malformed JSON", "", `{"client_id":`, 400, "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, s, PathToken, tc.query, "application/json", tc.body, nil)
			if status != tc.status || body["error"] != tc.code || body["error_description"] == "" {
				t.Errorf("got %d %v, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
	if s.Mints() != 0 {
		t.Errorf("errors minted %d tokens", s.Mints())
	}
	// The code survived the mismatched attempt, works once, then never again.
	ok := with(map[string]string{"grant_type": "authorization_code", "code": code, "redirect_uri": "https://example.com/cb"})
	if status, body := post(t, s, PathToken, "", "application/json", ok, nil); status != 200 || body["scope"] != "account_linking" {
		t.Fatalf("code exchange: %d %v", status, body)
	}
	if status, body := post(t, s, PathToken, "", "application/json", ok, nil); status != 400 || body["error"] != "invalid_grant" {
		t.Errorf("second use of a code: %d %v", status, body)
	}
}

func TestFormBodyAndBasicAuth(t *testing.T) {
	s := newTestFake(t)
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"connect:fulfillment connect:ian"}}.Encode()
	status, body := post(t, s, PathToken, "", "application/x-www-form-urlencoded", form, func(r *http.Request) { r.SetBasicAuth(testID, testSecret) })
	if status != 200 || body["token_type"] != "Bearer" || body["scope"] != "connect:fulfillment connect:ian" || body["expires_in"] != float64(86400) {
		t.Fatalf("form + basic: %d %v", status, body)
	}
	if tok := body["access_token"].(string); len(tok) != 43 || !s.TokenLive(tok) {
		t.Errorf("token %d chars, live %v", len(tok), s.TokenLive(tok))
	}
}

func TestUsersEndpointFollowsTokenState(t *testing.T) {
	s := newTestFake(t)
	s.SetTokenLifetime(time.Second)
	_, body := post(t, s, PathToken, "", "application/json", jsonBody(map[string]string{"client_id": testID, "client_secret": testSecret, "grant_type": "client_credentials"}), nil)
	tok := body["access_token"].(string)
	user := `{"user_id":"johnsmith6000","first_name":"john","last_name":"smith","phone_number":"800-555-0100"}`
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }

	if status, got := post(t, s, PathUsers, "", "application/json", user, bearer); status != 200 || got["user_id"] != "johnsmith6000" {
		t.Fatalf("live token: %d %v", status, got)
	}
	s.Advance(time.Second)
	status, got := post(t, s, PathUsers, "", "application/json", user, bearer)
	errObj, _ := got["error"].(map[string]any)
	if status != 401 || errObj["code"] != float64(1001) || got["meta"] == nil {
		t.Errorf("expired token: %d %v", status, got)
	}
}

func TestRevokeRules(t *testing.T) {
	s := newTestFake(t)
	s.AddClient("other", "other-secret")
	_, body := post(t, s, PathToken, "", "application/json", jsonBody(map[string]string{"client_id": testID, "client_secret": testSecret, "grant_type": "client_credentials"}), nil)
	tok := body["access_token"].(string)

	revoke := func(id, secret, token string) (int, map[string]any) {
		return post(t, s, PathRevoke, "", "application/json", jsonBody(map[string]string{"client_id": id, "client_secret": secret, "token": token}), nil)
	}
	if status, got := revoke(testID, "wrong", tok); status != 401 || got["error"] != "invalid_client" {
		t.Errorf("bad client: %d %v", status, got)
	}
	if status, got := revoke("other", "other-secret", tok); status != 403 || got["error"] != "unauthorized_client" || !s.TokenLive(tok) {
		t.Errorf("other client: %d %v", status, got)
	}
	if status, _ := revoke(testID, testSecret, tok); status != 200 || s.TokenLive(tok) || s.Revocations() != 1 {
		t.Errorf("owner: %d, live %v, revocations %d", status, s.TokenLive(tok), s.Revocations())
	}
	if status, _ := revoke(testID, testSecret, "never-issued"); status != 200 || s.Revocations() != 1 {
		t.Errorf("unknown token: %d, revocations %d", status, s.Revocations())
	}
}

func TestFaultsAreConsumedInOrder(t *testing.T) {
	s := newTestFake(t)
	s.InjectFaults(PathToken, Fault{Status: 429, RetryAfter: "3"}, Fault{Status: 503, Body: `{"error":"down"}`})
	body := jsonBody(map[string]string{"client_id": testID, "client_secret": testSecret, "grant_type": "client_credentials"})
	if status, got := post(t, s, PathToken, "", "application/json", body, nil); status != 429 || got["error"] != "too_many_requests" {
		t.Errorf("first: %d %v", status, got)
	}
	if status, got := post(t, s, PathToken, "", "application/json", body, nil); status != 503 || got["error"] != "down" {
		t.Errorf("second: %d %v", status, got)
	}
	if status, _ := post(t, s, PathToken, "", "application/json", body, nil); status != 200 {
		t.Errorf("third: %d", status)
	}
	if s.Requests(PathToken) != 3 || s.Mints() != 1 {
		t.Errorf("requests %d mints %d", s.Requests(PathToken), s.Mints())
	}
}

func TestAdminAPIIsOffByDefault(t *testing.T) {
	s := newTestFake(t)
	resp, err := http.Get(s.URL + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("admin API answered %d before EnableAdmin", resp.StatusCode)
	}
	s.EnableAdmin()
	status, got := post(t, s, "/_fake/authorize", "", "application/json", `{"client_id":"`+testID+`","redirect_uri":"https://example.com/cb","user_id":"u9"}`, nil)
	if status != 200 || got["code"] == "" {
		t.Fatalf("authorize: %d %v", status, got)
	}
	resp, err = http.Get(s.URL + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(raw), testSecret) {
		t.Error("stats reveal the client secret")
	}
}

// An after_handling fault (queued through the admin API, as the end-to-end
// suite does) lets Connect process the request before the client loses the
// answer: the code is spent and the token live.
func TestAfterHandlingResetConsumesCode(t *testing.T) {
	s := newTestFake(t)
	s.EnableAdmin()
	code := s.IssueAuthorizationCode(testID, "https://example.com/cb", "u1")
	resp, err := http.Post(s.URL+"/_fake/faults", "application/json",
		strings.NewReader(`{"path":"`+PathToken+`","faults":[{"reset":true,"after_handling":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("queueing the fault: HTTP %d", resp.StatusCode)
	}

	exchange := jsonBody(map[string]string{"client_id": testID, "client_secret": testSecret, "grant_type": "authorization_code",
		"code": code, "redirect_uri": "https://example.com/cb"})
	resp, err = http.Post(s.URL+PathToken, "application/json", strings.NewReader(exchange))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("the answer arrived despite the reset")
	}
	tokens := s.Tokens()
	if len(tokens) != 1 || tokens[0].GrantType != "authorization_code" || tokens[0].UserID != "u1" || s.Mints() != 1 {
		t.Fatalf("tokens %+v, mints %d", tokens, s.Mints())
	}
	if tokens[0].Revoked || !time.Now().Before(tokens[0].ExpiresAt) {
		t.Errorf("the minted token is not live: %+v", tokens[0])
	}
	if status, got := post(t, s, PathToken, "", "application/json", exchange, nil); status != 400 || got["error"] != "invalid_grant" {
		t.Errorf("second use of the code: %d %v", status, got)
	}
}

func TestAfterHandlingBodyCarriesMintedToken(t *testing.T) {
	s := newTestFake(t)
	s.InjectFaults(PathToken,
		Fault{Status: 200, AfterHandling: true, Body: `{"access_token":"` + PlaceholderAccessToken + `","token_type":"mac","expires_in":86400}`},
		Fault{AfterHandling: true}) // a real answer, merely late
	body := jsonBody(map[string]string{"client_id": testID, "client_secret": testSecret, "grant_type": "client_credentials"})
	for i := range 2 {
		status, got := post(t, s, PathToken, "", "application/json", body, nil)
		tok, _ := got["access_token"].(string)
		if status != 200 || !s.TokenLive(tok) {
			t.Errorf("answer %d: %d %v, live %v", i, status, got, s.TokenLive(tok))
		}
	}
	if s.Mints() != 2 {
		t.Errorf("mints = %d, want 2", s.Mints())
	}
}
