package instacart

import (
	"hash/fnv"
	"testing"
)

// stripeOf keeps the FNV-1a spread the role locks and the token cache used
// before it, and stays within its n stripes.
func TestStripeOfIsFNV1aModuloN(t *testing.T) {
	for _, key := range []string{"", "a", "role", "tokens/cc/user-0123456789abcdef", "\xff\x00é"} {
		for _, n := range []int{1, roleLockStripes, genStripes} {
			h := fnv.New32a()
			_, _ = h.Write([]byte(key))
			want := int(h.Sum32() % uint32(n))
			if got := stripeOf(key, n); got != want {
				t.Errorf("stripeOf(%q, %d) = %d, want %d", key, n, got, want)
			}
		}
	}
}
