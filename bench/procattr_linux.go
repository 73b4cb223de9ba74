package main

import "syscall"

// childAttr makes children die with the benchmark even when it is killed
// before its deferred clean-up runs (SIGPIPE from `| head`, SIGKILL).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
