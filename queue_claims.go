package instacart

import (
	"context"
	"fmt"
	"sync"
)

// queueClaims gives each queued entry, and each role's queue, one owner at a time.
type queueClaims struct {
	mu      sync.Mutex
	entries map[string]chan struct{} // claimed key -> closed when released
	turns   map[string]*queueTurn    // role -> its pass turn
}

// queueTurn is a role's pass turn: hold it by taking the token from ch.
type queueTurn struct {
	ch chan struct{}
	// next is the unit the next pass starts at ("" from the start); only the
	// holder of the turn reads or writes it.
	next tokenUnit
}

func newQueueClaims() *queueClaims {
	return &queueClaims{entries: map[string]chan struct{}{}, turns: map[string]*queueTurn{}}
}

// tryClaim claims key unless someone holds it.
func (c *queueClaims) tryClaim(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, held := c.entries[key]; held {
		return false
	}
	c.entries[key] = make(chan struct{})
	return true
}

// claim waits, within ctx, to claim key. Claims are held for a storage call
// or one attempt at Connect (each bounded), never while waiting for a turn.
func (c *queueClaims) claim(ctx context.Context, key string) error {
	for {
		c.mu.Lock()
		held, busy := c.entries[key]
		if !busy {
			c.entries[key] = make(chan struct{})
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return fmt.Errorf("waiting for another revocation of the same token: %w", ctx.Err())
		}
	}
}

// release gives key up.
func (c *queueClaims) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.entries[key]; ok {
		close(ch)
		delete(c.entries, key)
	}
}

// turn is role's pass turn.
func (c *queueClaims) turn(role string) *queueTurn {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.turns[role]
	if t == nil {
		t = &queueTurn{ch: make(chan struct{}, 1)}
		t.ch <- struct{}{}
		c.turns[role] = t
	}
	return t
}

// take waits within ctx for the turn (wait) or takes it only if free.
func (t *queueTurn) take(ctx context.Context, wait bool) (bool, error) {
	if !wait {
		select {
		case <-t.ch:
			return true, nil
		default:
			return false, nil
		}
	}
	select {
	case <-t.ch:
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("waiting for the pass over the queue already running: %w", ctx.Err())
	}
}

func (t *queueTurn) give() { t.ch <- struct{}{} }
