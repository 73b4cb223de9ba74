package connectfake

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Error descriptions as Instacart documents them.
const (
	descInvalidGrant        = "Assertion is not provided or invalid assertion provided for the grant_type."
	descInvalidCode         = "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."
	descInvalidClient       = "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."
	descQueryParams         = "Providing OAuth credentials as query parameters may cause them to be compromised. Please ensure the credentials are rotated."
	descInvalidRequest      = "The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed."
	descUnsupportedGrant    = "The authorization grant type is not supported by the authorization server."
	descInvalidScope        = "The requested scope is invalid, unknown, or malformed."
	descUnauthorizedRevoker = "You are not authorized to revoke this token"
)

// maxBody bounds request bodies, as any real server would.
const maxBody = 1 << 20

// Handler returns the fake's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathToken, s.withFaults(PathToken, s.handleToken))
	mux.HandleFunc("POST "+PathRevoke, s.withFaults(PathRevoke, s.handleRevoke))
	mux.HandleFunc("POST "+PathUsers, s.withFaults(PathUsers, s.handleUsers))
	mux.HandleFunc("POST "+PathSandboxUsers+"/{user_id}/authorize", s.handleSandboxAuthorize)
	mux.Handle("/_fake/", s.adminHandler())
	return mux
}

// oauthParams are the fields of a token or revoke request, from a JSON or
// form body with optional HTTP Basic client authentication (Doorkeeper
// accepts all three, and OAuth libraries send the latter two).
type oauthParams struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	GrantType    string `json:"grant_type"`
	Scope        string `json:"scope"`
	Assertion    string `json:"assertion"`
	Code         string `json:"code"`
	RedirectURI  string `json:"redirect_uri"`
	Token        string `json:"token"`
}

func parseParams(r *http.Request, body []byte) (oauthParams, bool) {
	var p oauthParams
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(&p); err != nil {
			return p, false
		}
	case "application/x-www-form-urlencoded":
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return p, false
		}
		p = oauthParams{
			ClientID: form.Get("client_id"), ClientSecret: form.Get("client_secret"),
			GrantType: form.Get("grant_type"), Scope: form.Get("scope"), Assertion: form.Get("assertion"),
			Code: form.Get("code"), RedirectURI: form.Get("redirect_uri"), Token: form.Get("token"),
		}
	default:
		if len(bytes.TrimSpace(body)) > 0 {
			return p, false
		}
	}
	if id, secret, ok := r.BasicAuth(); ok {
		p.ClientID, p.ClientSecret = id, secret
	}
	return p, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// credentialsInQuery reports whether the query string carries anything
// Connect refuses to see there.
func credentialsInQuery(r *http.Request) bool {
	q := r.URL.Query()
	for _, k := range []string{"client_id", "client_secret", "assertion", "code"} {
		if q.Has(k) {
			return true
		}
	}
	return false
}

// authenticate checks client credentials; the caller holds s.mu.
func (s *Server) authenticateLocked(p oauthParams) bool {
	return p.ClientID != "" && p.ClientSecret != "" && slices.Contains(s.clients[p.ClientID], p.ClientSecret)
}

// oauthRequest refuses credentials in the query string, as Connect does, and
// parses the body; on failure it has written the error.
func oauthRequest(w http.ResponseWriter, r *http.Request, body []byte) (oauthParams, bool) {
	if credentialsInQuery(r) {
		oauthError(w, http.StatusForbidden, "query_params_forbidden", descQueryParams)
		return oauthParams{}, false
	}
	p, ok := parseParams(r, body)
	if !ok {
		oauthError(w, http.StatusBadRequest, "invalid_request", descInvalidRequest)
	}
	return p, ok
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request, body []byte) {
	p, ok := oauthRequest(w, r, body)
	if !ok {
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.authenticateLocked(p) {
		oauthError(w, http.StatusUnauthorized, "invalid_client", descInvalidClient)
		return
	}
	allowed, known := grantScopes[p.GrantType]
	if p.GrantType == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", descInvalidRequest)
		return
	}
	if !known {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", descUnsupportedGrant)
		return
	}
	scopes := strings.FieldsFunc(p.Scope, func(r rune) bool { return r == ',' || r == ' ' })
	if len(scopes) == 0 {
		scopes = []string{defaultScopes[p.GrantType]}
	}
	for _, sc := range scopes {
		if !allowed[sc] {
			oauthError(w, http.StatusBadRequest, "invalid_scope", descInvalidScope)
			return
		}
	}

	info := &TokenInfo{ClientID: p.ClientID, GrantType: p.GrantType, Scopes: scopes}
	switch p.GrantType {
	case "fulfillment_user_assertion":
		userID, ok := decodeAssertion(p.Assertion)
		if !ok {
			oauthError(w, http.StatusBadRequest, "invalid_grant", descInvalidGrant)
			return
		}
		info.UserID = userID
	case "authorization_code":
		if p.Code == "" || p.RedirectURI == "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", descInvalidRequest)
			return
		}
		c, ok := s.codes[p.Code]
		if !ok || c.used || c.clientID != p.ClientID || c.redirectURI != p.RedirectURI {
			oauthError(w, http.StatusBadRequest, "invalid_grant", descInvalidCode)
			return
		}
		c.used = true
		info.UserID = c.userID
	}

	now := s.nowLocked()
	tok := randomToken()
	info.CreatedAt = now.Add(s.skew)
	info.ExpiresAt = now.Add(s.lifetime)
	s.tokens[tok] = info
	s.mints++
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int64(s.lifetime / time.Second),
		"created_at":   info.CreatedAt.Unix(),
		"scope":        strings.Join(scopes, " "),
	})
}

// decodeAssertion accepts only standard base64 of a JSON object with a
// non-empty string user_id, so the documentation's broken sample
// ({ "user_id": kamalsingh1234}) is rejected as Connect would.
func decodeAssertion(a string) (string, bool) {
	if a == "" {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(a)
	if err != nil {
		return "", false
	}
	var v struct {
		UserID *string `json:"user_id"`
	}
	if err := json.Unmarshal(raw, &v); err != nil || v.UserID == nil || *v.UserID == "" {
		return "", false
	}
	return *v.UserID, true
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request, body []byte) {
	p, ok := oauthRequest(w, r, body)
	if !ok {
		return
	}
	if p.Token == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", descInvalidRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.authenticateLocked(p) {
		oauthError(w, http.StatusUnauthorized, "invalid_client", descInvalidClient)
		return
	}
	if info, ok := s.tokens[p.Token]; ok {
		if info.ClientID != p.ClientID {
			oauthError(w, http.StatusForbidden, "unauthorized_client", descUnauthorizedRevoker)
			return
		}
		if s.liveLocked(p.Token) {
			s.revocations++
		}
		info.Revoked = true
	}
	// Unknown and already revoked tokens are answered like a successful
	// revocation (RFC 7009 §2.2).
	writeJSON(w, http.StatusOK, map[string]any{})
}

// bearerLive checks the Authorization header against live tokens.
func (s *Server) bearerLive(r *http.Request) (TokenInfo, bool) {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return TokenInfo{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked(tok) {
		return TokenInfo{}, false
	}
	return s.tokens[tok].clone(), true
}

// connectError writes the error shape of Connect's non-OAuth APIs.
func connectError(w http.ResponseWriter, status, code int, msg, key string) {
	writeJSON(w, status, map[string]any{
		"error": map[string]any{"message": msg, "code": code},
		"meta":  map[string]any{"key": key},
	})
}

func (s *Server) handleUsers(w http.ResponseWriter, r *http.Request, body []byte) {
	if _, ok := s.bearerLive(r); !ok {
		connectError(w, http.StatusUnauthorized, 1001, "The access token is invalid, expired or revoked.", "authorization")
		return
	}
	var user map[string]any
	if err := json.Unmarshal(body, &user); err != nil {
		connectError(w, http.StatusBadRequest, 1001, "Request body is not valid JSON.", "body")
		return
	}
	if id, _ := user["user_id"].(string); id == "" {
		connectError(w, http.StatusBadRequest, 1001, "user_id is required.", "user_id")
		return
	}
	writeJSON(w, http.StatusOK, user)
}

// handleSandboxAuthorize is the development-host helper that hands out an
// authorization code for account linking to the calling application.
func (s *Server) handleSandboxAuthorize(w http.ResponseWriter, r *http.Request) {
	info, ok := s.bearerLive(r)
	if !ok {
		connectError(w, http.StatusUnauthorized, 1001, "The access token is invalid, expired or revoked.", "authorization")
		return
	}
	var req struct {
		RedirectURI string `json:"redirect_uri"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&req)
	if req.RedirectURI == "" {
		connectError(w, http.StatusBadRequest, 1001, "redirect_uri is required.", "redirect_uri")
		return
	}
	code := s.IssueAuthorizationCode(info.ClientID, req.RedirectURI, r.PathValue("user_id"))
	writeJSON(w, http.StatusOK, map[string]string{"code": code})
}
