package instacart

import "github.com/instacart-vault/vault-plugin-secrets-instacart/connect"

// testHooks let tests see or steer the engine at points no request, storage
// wrapper or fake Connect reaches. Only tests set them (backend.hooks is nil
// in production), and every call is safe on a nil *testHooks.
type testHooks struct {
	mintQueued    func()                // a mint must wait for a slot
	sharedWait    func()                // a reader waits on a shared mint
	connectConfig func(*connect.Config) // adjust every Connect client (transport, waits)
}

func (h *testHooks) onMintQueued() {
	if h != nil && h.mintQueued != nil {
		h.mintQueued()
	}
}

func (h *testHooks) onSharedWait() {
	if h != nil && h.sharedWait != nil {
		h.sharedWait()
	}
}

func (h *testHooks) adjustConnect(cc *connect.Config) {
	if h != nil && h.connectConfig != nil {
		h.connectConfig(cc)
	}
}
