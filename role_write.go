package instacart

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// writeRole validates and stores a role under the role lock.
func (b *backend) writeRole(ctx context.Context, s logical.Storage, name string, d *framework.FieldData) (old, r *role, warnings []string, resp *logical.Response, err error) {
	mu := b.roleLock(name)
	mu.Lock()
	defer mu.Unlock()

	old, err = b.getRoleLocked(ctx, s, name)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	r, warnings, problem := roleFromRequest(old, d)
	if problem != "" {
		return nil, nil, nil, logical.ErrorResponse(problem), nil
	}
	if old == nil {
		if r.Incarnation, err = newRandomID(); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	r.computeHash()

	if err := putJSON(ctx, s, roleStoragePrefix+name, r); err != nil {
		return nil, nil, nil, nil, err
	}
	b.roles.Store(name, r)
	b.metrics.invalidateGauges() // the next scrape shows the role
	if old != nil && old.hash != r.hash {
		b.forgetRoleTokens(name) // tokens minted for the old scopes or user are out of service
	}
	return old, r, warnings, nil, nil
}

// deleteRole removes a role under the role lock and takes its shared tokens
// out of service (they stay stored, valid for their leases, until a flush
// revokes them or they expire). old is the role deleted, nil if none was.
func (b *backend) deleteRole(ctx context.Context, s logical.Storage, name string) (old *role, err error) {
	mu := b.roleLock(name)
	mu.Lock()
	defer mu.Unlock()
	old, err = b.getRoleLocked(ctx, s, name)
	if err == nil {
		err = s.Delete(ctx, roleStoragePrefix+name)
	}
	if err != nil {
		return nil, storageError(fmt.Sprintf("deleting role %q", name), err)
	}
	b.roles.Delete(name)
	b.forgetRoleTokens(name)
	b.metrics.roleDeleted(name) // its series go with it
	return old, nil
}
