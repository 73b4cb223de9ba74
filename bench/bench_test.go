//go:build bench

// The benchmark program's own check: it builds and a smoke run completes.
// Tagged so `go test ./...` never starts Vault; run it with
//
//	go test -tags bench -count=1 -v ./bench/
package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSmokeRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := t.TempDir() // keep bench/results/latest.* from the last real run
	var log bytes.Buffer
	md, err := run(ctx, options{smoke: true, rounds: 1, duration: time.Second, latency: 50 * time.Millisecond, out: out}, &log)
	if err != nil {
		t.Fatalf("smoke run: %v\n%s", err, log.String())
	}
	for _, want := range []string{"## Targets", "| 3 | cold start", "| 4 | exclusive role", "| 1c | raft:", "| 7b | raft: through Vault Proxy",
		"| 8a | 400 users: 0 failures | 0 failed, 400 served | met |", "| 8b |", "| 8d |", "| 8e | raft: cold per-user read", "| 8f | inmem:", "stored tokens after tidy | 0 |",
		"## Per-user tokens on raft", "## What a lease per read costs", "## Through Vault Proxy on raft", "### Vault's CPU profile", "Smoke run",
		// Scenario 9: the cold per-user read against the mint floor, on both servers.
		"## Cold per-user reads against the mint floor", "| 9a | inmem, 1 client(s): cold per-user throughput", "| 9b | inmem, 1 client(s): cold per-user p99",
		"| 9f | inmem, 32 client(s): cold per-user p99", "| 9g | raft, 1 client(s): cold per-user throughput", "| 9l | raft, 32 client(s): cold per-user p99",
		"| inmem | 32 |", "| raft | 32 |", "### Storage writes per new user", "| raft | ours-cold |", "| raft | floor |", "On raft, per new user: **ours",
		// Scenario 10, tiny: the users on the dev server, then their tidy on raft.
		"## 400 shoppers (scenario 10)", "| 10a | 400 users (inmem): 0 failures | 0 failed, 400 served | met |",
		"| 10b | 400 users (inmem): exactly one upstream token request per user | 400 token requests for 400 users | met |", "| 10c |",
		"| 10d | 400 users: stored tokens after expiry and tidy = 0 | inmem: 400 stored after the users, 400 once expired, 0 after",
		"| stored tokens after tidy | 0 |", "| 10e | raft: tidy of 401 expired tokens with no reads", "| 10f | raft: cached reads",
		"| 10g | raft: reads of a KV mount", "| 10h | raft: tidy of 400 expired tokens under steady reads", "### Tidy on raft",
		"| tidy with no reads: stored before / after | 401 / 0 |", "| tidy under reads: stored before / after | 400 / 0 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, f := range []string{"latest.md", "latest.svg", "vault-cpu-users.txt"} {
		if b, err := os.ReadFile(filepath.Join(out, f)); err != nil || len(b) == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	if svg, _ := os.ReadFile(filepath.Join(out, "latest.svg")); !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.HasSuffix(bytes.TrimSpace(svg), []byte("</svg>")) {
		t.Error("latest.svg is not a complete SVG document")
	}
}
