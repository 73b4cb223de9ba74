package fairshare

import (
	"context"
	"testing"
)

// TestSlotsResize: after a shrink below what is held, nothing is handed out
// until holders are back under the new size; a growth serves waiters at once.
func TestSlotsResize(t *testing.T) {
	s := New(3)
	for range 3 {
		if !s.TryAcquire() {
			t.Fatal("a free slot was refused")
		}
	}
	s.Resize(1)
	if s.Size() != 1 {
		t.Fatalf("Size = %d after Resize(1)", s.Size())
	}
	got := make(chan string, 2)
	for _, g := range []string{"a", "b"} {
		go func() {
			if err := s.Acquire(context.Background(), g); err != nil {
				t.Error(err)
			}
			got <- g
		}()
		waitQueued(t, s, map[string]int{"a": 1, "b": 2}[g])
	}
	s.Release()
	s.Release() // 1 held: still not below the size of 1
	if queued(s, 2) != true {
		t.Fatal("a waiter was served while the holders were not under the new size")
	}
	s.Release() // 0 held
	if g := <-got; g != "a" {
		t.Fatalf("the freed slot went to %q, want a (first in turn)", g)
	}
	if !queued(s, 1) {
		t.Fatal("b was served beyond the size of 1")
	}
	s.Resize(2) // room for b at once
	if g := <-got; g != "b" {
		t.Fatalf("the new slot went to %q, want b", g)
	}
	if s.TryAcquire() {
		t.Error("a third holder got a slot; the size is 2")
	}
}
