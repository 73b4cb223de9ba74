// Package stack runs the local stack the end-to-end suite (e2e/) and the
// benchmark (bench/) drive: child processes with log files, the Connect fake
// (cmd/connect-fake) and a Vault server, plus the small helpers around them
// (go build, checksums, free ports, polling). Every function returns errors;
// callers decide whether an error fails a test or ends a program.
//
// Secrets (the fake's client secret, Vault tokens) never appear in errors.
package stack

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before it kills.
const stopGrace = 20 * time.Second

// Proc is a child process whose stdout and stderr go to a log file.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartProc runs bin with args, appending to logPath; env is added to the
// parent's environment. On Linux the child gets SIGTERM when the parent dies.
func StartProc(name, logPath string, env []string, bin string, args ...string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// Stop asks the process and everything it started (its process group: for
// Vault, its plugin processes) to exit (SIGTERM), then kills the group if it
// lingers. It is safe on a nil or already stopped process.
func (p *Proc) Stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		_ = signalGroup(p.cmd.Process, syscall.SIGKILL) // anything it left behind
		return
	default:
	}
	_ = signalGroup(p.cmd.Process, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = signalGroup(p.cmd.Process, syscall.SIGKILL)
		<-p.done
	}
	// Whatever the leader left running in its group (a plugin whose Vault
	// is gone) goes with it.
	_ = signalGroup(p.cmd.Process, syscall.SIGKILL)
}

// Signal sends sig to the process and everything it started (its process
// group), as a machine's crash (SIGKILL) or pause (SIGSTOP, SIGCONT) hits a
// node with its plugin processes.
func (p *Proc) Signal(sig syscall.Signal) error {
	if err := signalGroup(p.cmd.Process, sig); err != nil {
		return fmt.Errorf("signal %v to %s: %w", sig, p.Name, err)
	}
	return nil
}

// Exited reports whether the process has ended (a nil Proc has).
func (p *Proc) Exited() bool {
	if p == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Log is everything the process has logged so far.
func (p *Proc) Log() (string, error) {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return "", fmt.Errorf("%s log: %w", p.Name, err)
	}
	return string(b), nil
}

// Tail is the end of the process log, for error messages.
func (p *Proc) Tail() string {
	if p == nil {
		return ""
	}
	b, _ := os.ReadFile(p.LogPath)
	return LastLines(string(b), 20)
}

// WaitFor polls cond like the package-level WaitFor, but gives up as soon as
// the process exits; both errors carry the end of its log.
func (p *Proc) WaitFor(timeout time.Duration, what string, cond func() bool) error {
	exited := false
	err := WaitFor(timeout, what, func() bool {
		exited = p.Exited()
		return exited || cond()
	})
	if err == nil && exited {
		err = fmt.Errorf("%s exited while waiting for %s", p.Name, what)
	}
	if err != nil {
		return fmt.Errorf("%w\n%s", err, p.Tail())
	}
	return nil
}

// WaitFor polls cond every 100ms until it holds or timeout passes.
func WaitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// GoBuild builds pkg (relative to dir, the module to build in) into out,
// stripped and without cgo; ldflags are added to "-s -w".
func GoBuild(ctx context.Context, dir, out, pkg, ldflags string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w "+ldflags), "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, LastLines(string(out), 15))
	}
	return nil
}

// FileSHA256 is the hex SHA-256 of a file, as Vault's plugin catalog wants it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FreePort is a loopback TCP port nothing listened on a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// RandomHex is n random bytes, hex-encoded (2n characters).
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// LastLines is the last n lines of s.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
