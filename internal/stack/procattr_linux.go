package stack

import (
	"os"
	"syscall"
)

// childAttr puts each child in its own process group, so Stop can end it with
// everything it started (Vault's plugin processes), and makes it die with its
// parent even when that is killed before its clean-up runs (SIGPIPE from
// `| head`, SIGKILL, a test timeout).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalGroup signals p's whole process group.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	return syscall.Kill(-p.Pid, sig)
}
