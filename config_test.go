package instacart

import (
	"testing"
)

func TestBaseURLMustBeHTTPSOrLoopback(t *testing.T) {
	ok := map[string]string{
		"https://connect.instacart.com/":       "https://connect.instacart.com",
		"https://connect.dev.instacart.tools":  "https://connect.dev.instacart.tools",
		"http://127.0.0.1:8080":                "http://127.0.0.1:8080",
		"http://localhost:1234/":               "http://localhost:1234",
		"http://[::1]:9999":                    "http://[::1]:9999",
		" https://connect.instacart.com/base/": "https://connect.instacart.com/base",
	}
	for in, want := range ok {
		if got, err := normalizeBaseURL(in); err != nil || got != want {
			t.Errorf("normalizeBaseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "http://10.0.0.1", "http://localhost.evil.com", "https://", "mailto:x@y", "https://a.b/#frag", "javascript:alert(1)"} {
		if got, err := normalizeBaseURL(bad); err == nil {
			t.Errorf("normalizeBaseURL(%q) = %q, want an error", bad, got)
		}
	}
}
