// Package fairshare is a counting semaphore whose waiters are served round
// robin by group, so one busy group cannot starve the others: a slot that
// frees goes to the next group in turn, not to whoever queued first.
package fairshare

import (
	"context"
	"sync"
)

// Slots bounds how many holders run at once. The zero value has no slots;
// use New.
type Slots struct {
	mu     sync.Mutex
	size   int
	inUse  int
	queues map[string][]*waiter // group -> its waiters, first come first
	turns  []string             // groups with waiters, in the order they are served
}

type waiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool          // guarded by Slots.mu
}

// New returns size slots (size >= 1).
func New(size int) *Slots {
	return &Slots{size: max(size, 1), queues: map[string][]*waiter{}}
}

// Size is how many slots there are.
func (s *Slots) Size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// Resize sets how many slots there are (n >= 1). Holders keep their slots:
// after a shrink below what is held, none is handed out until enough are
// released; after a growth, waiters get the new slots in turn. Replacing the
// Slots instead would let the old one's holders run beside the new one's.
func (s *Slots) Resize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.size = max(n, 1)
	s.grant()
}

// TryAcquire takes a slot if one is free and nobody waits.
func (s *Slots) TryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse < s.size && len(s.turns) == 0 {
		s.inUse++
		return true
	}
	return false
}

// Acquire waits, within ctx, for a slot for group. It returns ctx's error if
// ctx ends first; no slot is then held.
func (s *Slots) Acquire(ctx context.Context, group string) error {
	s.mu.Lock()
	if s.inUse < s.size && len(s.turns) == 0 {
		s.inUse++
		s.mu.Unlock()
		return nil
	}
	w := &waiter{ready: make(chan struct{})}
	if len(s.queues[group]) == 0 {
		s.turns = append(s.turns, group)
	}
	s.queues[group] = append(s.queues[group], w)
	s.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		if w.granted { // handed over as ctx ended: pass it on
			s.mu.Unlock()
			s.Release()
			return ctx.Err()
		}
		s.remove(group, w)
		s.mu.Unlock()
		return ctx.Err()
	}
}

// Release frees a slot, handing it to the next group's first waiter.
func (s *Slots) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inUse--
	s.grant()
}

// grant hands free slots to waiters, one group's first waiter at a time in
// turn; s.mu is held.
func (s *Slots) grant() {
	for s.inUse < s.size && len(s.turns) > 0 {
		group := s.turns[0]
		q := s.queues[group]
		w := q[0]
		s.queues[group] = q[1:]
		s.turns = s.turns[1:]
		if len(q) > 1 {
			s.turns = append(s.turns, group) // its next waiter goes to the back of the turns
		} else {
			delete(s.queues, group)
		}
		s.inUse++
		w.granted = true
		close(w.ready)
	}
}

// remove drops a waiter that gave up; s.mu is held.
func (s *Slots) remove(group string, w *waiter) {
	q := s.queues[group]
	for i, x := range q {
		if x == w {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) > 0 {
		s.queues[group] = q
		return
	}
	delete(s.queues, group)
	for i, g := range s.turns {
		if g == group {
			s.turns = append(s.turns[:i:i], s.turns[i+1:]...)
			break
		}
	}
}
