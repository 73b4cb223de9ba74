package stack

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcInfo is what /proc says of one live (not zombie) process.
type ProcInfo struct {
	Pid, PPid int
	Argv0     string
}

// Procs lists the live processes whose argv[0] satisfies match (Linux /proc;
// empty elsewhere).
func Procs(match func(argv0 string) bool) ([]ProcInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scanning /proc: %w", err)
	}
	var out []ProcInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv0, _, _ := bytes.Cut(b, []byte{0})
		if !match(string(argv0)) {
			continue
		}
		status, err := procStatus(pid)
		if err != nil || status["State"] == "" || status["State"][0] == 'Z' {
			continue
		}
		ppid, _ := strconv.Atoi(status["PPid"])
		out = append(out, ProcInfo{Pid: pid, PPid: ppid, Argv0: string(argv0)})
	}
	return out, nil
}

// RSSBytes is the resident memory (VmRSS) of pid.
func RSSBytes(pid int) (int64, error) {
	status, err := procStatus(pid)
	if err != nil {
		return 0, err
	}
	rss, ok := status["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(rss, "kB")), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing VmRSS %q: %w", rss, err)
	}
	return kb * 1024, nil
}

// Alive reports whether pid runs and is not a zombie.
func Alive(pid int) bool {
	status, err := procStatus(pid)
	return err == nil && status["State"] != "" && status["State"][0] != 'Z'
}

// procStatus reads /proc/<pid>/status as "Key: value" pairs.
func procStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("reading status of pid %d: %w", pid, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}
