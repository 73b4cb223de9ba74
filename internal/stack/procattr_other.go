//go:build !linux

package stack

import (
	"os"
	"syscall"
)

// childAttr: only Linux can tie a child's life to its parent's.
func childAttr() *syscall.SysProcAttr { return nil }

// signalGroup signals p alone: groups are set up on Linux only.
func signalGroup(p *os.Process, sig syscall.Signal) error { return p.Signal(sig) }
