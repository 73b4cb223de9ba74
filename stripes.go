package instacart

// stripeOf is the index, below n, of the stripe key falls in: the role locks
// and the token cache's generations and publish locks spread their keys this
// way, so work on one key rarely waits for another's. FNV-1a, written out so
// that it allocates nothing on the read path.
func stripeOf(key string, n int) int {
	const offset32, prime32 = 2166136261, 16777619
	h := uint32(offset32)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= prime32
	}
	return int(h % uint32(n))
}
