package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// Token reuse modes.
const (
	// reuseShared hands one cached token to every reader: Instacart asks
	// clients to "reuse the same token in your requests" during its 24 h life
	// (Get a user access token for the Recommendations API).
	reuseShared = "shared"
	// reuseExclusive mints per read and revokes when the lease ends.
	reuseExclusive = "exclusive"
)

const (
	defaultMinRemainingTTL = time.Hour
	maxRoleNameLength      = 128
	// maxUserIDLength bounds Connect user ids; they are retailer-chosen strings.
	maxUserIDLength = 255
	maxScopes       = 32
)

const roleStoragePrefix = "roles/"

// roleNamePattern matches the names the sdk's GenericNameRegex allows. Paths
// match any name so a bad one gets a 400 naming the field rather than a 404.
var roleNamePattern = regexp.MustCompile(`^\w([\w.-]*\w)?$`)

// scopeGrant maps each scope Connect documents to the grant it belongs to
// (Get started; Get a user access token for the Recommendations API; Generate
// a linking token). Scopes of one request must share a grant.
var scopeGrant = map[string]connect.GrantType{
	"connect:fulfillment":            connect.GrantClientCredentials,
	"connect:data_ingestion":         connect.GrantClientCredentials,
	"connect:compliance":             connect.GrantClientCredentials,
	"connect:ian":                    connect.GrantClientCredentials,
	"Connect::Orders::RatingService": connect.GrantClientCredentials,
	"connect:recommendations":        connect.GrantFulfillmentUserAssertion,
	"connect:post_checkout":          connect.GrantFulfillmentUserAssertion,
	"account_linking":                connect.GrantAuthorizationCode,
}

// role is a stored role. It is immutable once cached: writes store a new value.
type role struct {
	GrantType       connect.GrantType `json:"grant_type"`
	Scopes          []string          `json:"scopes"`
	UserID          string            `json:"user_id,omitempty"`
	AllowedUserIDs  []string          `json:"allowed_user_ids,omitempty"`
	RedirectURI     string            `json:"redirect_uri,omitempty"`
	TokenReuse      string            `json:"token_reuse"`
	MinRemainingTTL time.Duration     `json:"min_remaining_ttl"`
	TTL             time.Duration     `json:"ttl"`
	MaxTTL          time.Duration     `json:"max_ttl"`
	// Incarnation is set when the role is created and kept by updates, so a
	// role deleted and created again with the same definition is still a
	// different role: nothing minted for the old one is stored under it.
	Incarnation string `json:"incarnation,omitempty"`

	// hash identifies what a token minted for this role depends on, so a
	// cached token minted before a role edit is never handed out after it.
	hash string
}

func (r *role) shared() bool { return r.TokenReuse == reuseShared }

// computeHash fills r.hash from the fields that shape a minted token.
func (r *role) computeHash() {
	fields := []any{r.GrantType, r.Scopes, r.UserID}
	if r.Incarnation != "" { // roles stored before incarnations keep their hash
		fields = append(fields, r.Incarnation)
	}
	b, _ := json.Marshal(fields)
	sum := sha256.Sum256(b)
	r.hash = hex.EncodeToString(sum[:8])
}

func (r *role) responseData() map[string]any {
	data := map[string]any{
		"grant_type":        string(r.GrantType),
		"scopes":            nonNil(r.Scopes),
		"token_reuse":       r.TokenReuse,
		"min_remaining_ttl": int64(r.MinRemainingTTL.Seconds()),
		"ttl":               int64(r.TTL.Seconds()),
		"max_ttl":           int64(r.MaxTTL.Seconds()),
	}
	switch r.GrantType {
	case connect.GrantFulfillmentUserAssertion:
		data["user_id"] = r.UserID
		data["allowed_user_ids"] = nonNil(r.AllowedUserIDs)
	case connect.GrantAuthorizationCode:
		data["redirect_uri"] = r.RedirectURI
	}
	return data
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// validRoleName returns a 400 response when name is not a valid role name.
func validRoleName(name string) *logical.Response {
	if len(name) > maxRoleNameLength || !roleNamePattern.MatchString(name) {
		return logical.ErrorResponse("name: invalid role name: use at most %d letters, digits, '_', '-' or '.' (not at either end)", maxRoleNameLength)
	}
	return nil
}

// getRole returns a role from memory, loading it from storage on a miss.
func (b *backend) getRole(ctx context.Context, s logical.Storage, name string) (*role, error) {
	if r, ok := b.roles.Load(name); ok {
		return r.(*role), nil
	}
	// Load under the role lock (shared) so a load racing a write or delete
	// cannot put a stale role back into memory.
	mu := b.roleLock(name)
	mu.RLock()
	defer mu.RUnlock()
	return b.getRoleLocked(ctx, s, name)
}

// getRoleLocked is getRole for callers holding the role's lock (shared or exclusive).
func (b *backend) getRoleLocked(ctx context.Context, s logical.Storage, name string) (*role, error) {
	if r, ok := b.roles.Load(name); ok {
		return r.(*role), nil
	}
	r, err := getJSON[role](ctx, s, roleStoragePrefix+name)
	if err != nil || r == nil {
		return nil, err
	}
	r.computeHash()
	b.roles.Store(name, r)
	return r, nil
}

// roleFromRequest applies the request's fields to a copy of old (or to
// defaults for a new role) and validates the result. problem is a message for
// a 400 that names the offending field.
func roleFromRequest(old *role, d *framework.FieldData) (r *role, warnings []string, problem string) {
	r = &role{MinRemainingTTL: defaultMinRemainingTTL}
	if old != nil {
		copied := *old
		r = &copied
	}

	if v, ok := d.GetOk("grant_type"); ok {
		g := connect.GrantType(v.(string))
		if old != nil && g != old.GrantType {
			return nil, nil, fmt.Sprintf("grant_type cannot be changed from %q (delete and recreate the role)", old.GrantType)
		}
		r.GrantType = g
	}
	if r.GrantType == "" {
		return nil, nil, "grant_type is required"
	}
	if !r.GrantType.Valid() {
		return nil, nil, fmt.Sprintf("grant_type must be one of client_credentials, fulfillment_user_assertion or authorization_code, not %q", truncateForMessage(string(r.GrantType)))
	}
	if v, ok := d.GetOk("scopes"); ok {
		r.Scopes = v.([]string)
	}
	if v, ok := d.GetOk("user_id"); ok {
		r.UserID = v.(string)
	}
	if v, ok := d.GetOk("allowed_user_ids"); ok {
		r.AllowedUserIDs = v.([]string)
	}
	if v, ok := d.GetOk("redirect_uri"); ok {
		r.RedirectURI = v.(string)
	}
	if v, ok := d.GetOk("token_reuse"); ok {
		r.TokenReuse = v.(string)
	}
	if v, ok := d.GetOk("min_remaining_ttl"); ok {
		r.MinRemainingTTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("ttl"); ok {
		r.TTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("max_ttl"); ok {
		r.MaxTTL = time.Duration(v.(int)) * time.Second
	}
	if r.TokenReuse == "" {
		r.TokenReuse = reuseShared
		if r.GrantType == connect.GrantAuthorizationCode {
			r.TokenReuse = reuseExclusive // a code is single use: nothing to share
		}
	}

	warnings, problem = validateScopes(r.GrantType, r.Scopes)
	if problem != "" {
		return nil, nil, problem
	}
	if problem = validateGrantFields(r); problem != "" {
		return nil, nil, problem
	}
	switch {
	case r.TokenReuse != reuseShared && r.TokenReuse != reuseExclusive:
		return nil, nil, fmt.Sprintf("token_reuse must be %q or %q", reuseShared, reuseExclusive)
	case r.GrantType == connect.GrantAuthorizationCode && r.TokenReuse == reuseShared:
		return nil, nil, "token_reuse=shared is not allowed for authorization_code roles: each code mints one token"
	case r.MinRemainingTTL < 0:
		return nil, nil, "min_remaining_ttl must not be negative"
	case r.TTL < 0:
		return nil, nil, "ttl must not be negative"
	case r.MaxTTL < 0:
		return nil, nil, "max_ttl must not be negative"
	case r.MaxTTL > 0 && r.TTL > r.MaxTTL:
		return nil, nil, "ttl must not be greater than max_ttl"
	}
	return r, warnings, ""
}

// validateScopes checks scopes against the grant: a known scope of another
// grant is refused (Connect answers invalid_scope), an unknown one is passed
// on with a warning.
func validateScopes(g connect.GrantType, scopes []string) (warnings []string, problem string) {
	if len(scopes) == 0 && g != connect.GrantClientCredentials {
		return nil, fmt.Sprintf("scopes is required for %s roles", g)
	}
	if len(scopes) > maxScopes {
		return nil, fmt.Sprintf("scopes: at most %d scopes", maxScopes)
	}
	seen := map[string]bool{}
	for _, s := range scopes {
		switch {
		case s == "":
			return nil, "scopes: empty scope in the list"
		case len(s) > 128 || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == ',' || r == 0x7f }) || !utf8.ValidString(s):
			return nil, fmt.Sprintf("scopes: %q is not a valid scope (no spaces, commas or control characters)", truncateForMessage(s))
		case seen[s]:
			return nil, fmt.Sprintf("scopes: %q is listed twice", s)
		}
		seen[s] = true
		owner, known := scopeGrant[s]
		switch {
		case !known:
			warnings = append(warnings, fmt.Sprintf("scope %q is not one Connect documents; it is passed on as is", s))
		case owner != g:
			return nil, fmt.Sprintf("scopes: %q belongs to the %s grant, not %s", s, owner, g)
		}
	}
	return warnings, ""
}

// validateGrantFields checks the fields that belong to one grant only.
func validateGrantFields(r *role) string {
	assertion := r.GrantType == connect.GrantFulfillmentUserAssertion
	switch {
	case !assertion && r.UserID != "":
		return "user_id is only valid for fulfillment_user_assertion roles"
	case !assertion && len(r.AllowedUserIDs) > 0:
		return "allowed_user_ids is only valid for fulfillment_user_assertion roles"
	case r.GrantType != connect.GrantAuthorizationCode && r.RedirectURI != "":
		return "redirect_uri is only valid for authorization_code roles"
	}
	if assertion {
		switch {
		case r.UserID != "" && len(r.AllowedUserIDs) > 0:
			return "set only one of user_id or allowed_user_ids"
		case r.UserID == "" && len(r.AllowedUserIDs) == 0:
			return "user_id or allowed_user_ids is required for fulfillment_user_assertion roles"
		}
		if r.UserID != "" {
			if p := validUserID(r.UserID); p != "" {
				return "user_id " + p
			}
		}
		// Patterns are matched with strutil.StrListContainsGlob, where "*"
		// matches any run of characters; apart from that a pattern is held
		// to the same rule as a user id, so no pattern hides characters an
		// operator reviewing the role cannot see. The message gives the
		// pattern's position, never its text: errors are not HMAC'd in the
		// audit log, and patterns are user ids or parts of them.
		for i, g := range r.AllowedUserIDs {
			if validUserID(g) != "" {
				return fmt.Sprintf("allowed_user_ids: pattern %d of %d is not valid: each must be 1 to %d bytes of valid UTF-8 with no control or invisible characters (\"*\" matches any run of characters)", i+1, len(r.AllowedUserIDs), maxUserIDLength)
			}
		}
	}
	if r.GrantType == connect.GrantAuthorizationCode {
		if r.RedirectURI == "" {
			return "redirect_uri is required for authorization_code roles"
		}
		if p := validRedirectURI(r.RedirectURI); p != "" {
			return "redirect_uri " + p
		}
	}
	return ""
}

// validUserID accepts printable UTF-8 up to maxUserIDLength bytes: Connect user
// ids are the retailer's own, and the assertion JSON-encodes whatever they
// hold, but control characters and NUL are never part of a real id and only
// confuse logs and downstream systems, and invisible characters (hasInvisible)
// make two ids that look the same differ. The message never quotes the id:
// Vault's audit log HMACs request and response data but not error text or
// warnings, so a user id must not reach either.
func validUserID(id string) string {
	if id == "" || len(id) > maxUserIDLength || !utf8.ValidString(id) || hasControl(id) || hasInvisible(id) {
		return fmt.Sprintf("must be 1 to %d bytes of valid UTF-8 with no control or invisible characters", maxUserIDLength)
	}
	return ""
}

// hasInvisible reports whether s holds a character that renders as nothing
// (hasControl covers control characters, line separators and the direction
// overrides). It refuses the whole Unicode category Cf (format characters),
// which covers the zero-width space, non-joiner and joiner and the
// left-to-right and right-to-left marks (U+200B–U+200F), the Arabic letter
// mark (U+061C), the byte order mark / zero-width no-break space (U+FEFF),
// the word joiner and invisible operators (U+2060–U+2064), the bidi
// embeddings and isolates, the soft hyphen and the assigned tag characters,
// and also the whole tag block U+E0000–U+E007F, whose unassigned code points
// are not Cf.
func hasInvisible(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return unicode.Is(unicode.Cf, r) || (r >= 0xE0000 && r <= 0xE007F)
	})
}

// validRedirectURI requires an absolute https URL (http only on loopback), as
// OAuth redirect URIs registered with Instacart are.
func validRedirectURI(raw string) string {
	if len(raw) > 2048 || hasControl(raw) {
		return "must be at most 2048 printable characters"
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "must be an absolute URL"
	}
	if u.Fragment != "" {
		return "must not contain a fragment"
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())) {
		return "must use https:// (http:// only for loopback hosts)"
	}
	return ""
}

// truncateForMessage keeps echoed input short in error messages.
func truncateForMessage(s string) string {
	if len(s) <= 64 {
		return s
	}
	return strings.ToValidUTF8(s[:64], "") + "…"
}
