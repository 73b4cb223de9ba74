package fairshare

import (
	"context"
	"runtime"
	"testing"
)

// queued waits until n waiters are queued.
func queued(s *Slots, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, q := range s.queues {
		total += len(q)
	}
	return total == n
}

func waitQueued(t *testing.T, s *Slots, n int) {
	t.Helper()
	for i := 0; !queued(s, n); i++ {
		if i > 1e7 {
			t.Fatalf("never saw %d waiters", n)
		}
		runtime.Gosched()
	}
}

// TestSlotsServeGroupsInTurn: a group that queued many waiters first does
// not get every freed slot; the group that queued later is served next.
func TestSlotsServeGroupsInTurn(t *testing.T) {
	s := New(1)
	if !s.TryAcquire() {
		t.Fatal("the only slot was not free")
	}
	order := make(chan string, 8)
	start := func(group string, n int) {
		for i := 0; i < n; i++ {
			before := 0
			s.mu.Lock()
			for _, q := range s.queues {
				before += len(q)
			}
			s.mu.Unlock()
			go func() {
				if err := s.Acquire(context.Background(), group); err != nil {
					t.Error(err)
				}
				order <- group
			}()
			waitQueued(t, s, before+1) // queue them in a known order
		}
	}
	start("noisy", 4)
	start("quiet", 1)
	want := []string{"noisy", "quiet", "noisy", "noisy", "noisy"}
	for i, w := range want {
		s.Release()
		if got := <-order; got != w {
			t.Fatalf("slot %d went to %q, want %q (order %v)", i, got, w, want)
		}
	}
	s.Release()
	if !s.TryAcquire() {
		t.Fatal("the slot was not free after every holder released it")
	}
}

// TestSlotsWaiterThatLeavesHoldsNothing: a waiter whose context ends neither
// keeps a slot nor its place in the turns.
func TestSlotsWaiterThatLeavesHoldsNothing(t *testing.T) {
	s := New(1)
	s.TryAcquire()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Acquire(ctx, "a") }()
	waitQueued(t, s, 1)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Acquire returned no error after its context ended")
	}
	if !queued(s, 0) || len(s.turns) != 0 {
		t.Fatalf("the waiter that left is still queued: %v", s.turns)
	}
	s.Release()
	if !s.TryAcquire() {
		t.Fatal("the slot was not free after its holder released it")
	}
}
