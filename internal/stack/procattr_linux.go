package stack

import "syscall"

// childAttr makes children die with their parent even when it is killed
// before its clean-up runs (SIGPIPE from `| head`, SIGKILL, a test timeout).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
