// Command bench measures the Instacart secrets engine inside real Vault
// servers, the dev server (in-memory storage) and a single-node server on
// integrated storage (raft, as production runs), against a no-op plugin, the
// oauthapp plugin and KV v2, with the Connect fake as upstream; on raft also
// through Vault Proxy and with 100,000 distinct users on one assertion role;
// then, on fresh servers, the cold per-user read against the mint floor
// (scenario 9) and -users shoppers on the dev server with their tidy on raft
// (scenario 10). It writes a markdown report and an SVG chart.
//
//	go run ./bench                  # full run (about 40 minutes on 2 cores)
//	go run ./bench -smoke           # about a minute: checks the harness works
//	go run ./bench -only floor      # scenario 9 only
//	go run ./bench -only users -users 1000000   # the million shoppers only
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

type options struct {
	duration    time.Duration // per target per round
	warmup      time.Duration
	rounds      int
	latency     time.Duration // the fake's delay per token request
	smoke       bool
	out         string
	pluginBin   string
	concurrency []int
	coldReaders int
	leaseReads  int
	repo        string
	vaultBin    string
	// The per-user scenario: distinct users, concurrent clients, and the
	// token lifetime the fake hands out meanwhile (short, so every token
	// expires within the run).
	users        int
	userClients  int
	userLifetime time.Duration
	raftOnly     bool // skip the dev server's scenarios (for working on the raft ones)
	// only runs some parts: "main" (scenarios 1-8), "floor" (9: the cold
	// per-user read against the mint floor), "users" (10: -users shoppers
	// on the dev server, then their tidy on raft), "tidy" (10's tidy on
	// raft alone); all when empty.
	only          map[string]bool
	floorDuration time.Duration // per target, concurrency and round in scenario 9
	pluginPprof   bool          // our plugin built with pprof in scenarios 1-8 and 10 (scenario 9's always is)
	tidyProfile   bool          // profile Vault (and the plugin, with pluginPprof) during scenario 10's tidy on raft with no reads
	floorProfile  bool          // scenario 9 profiles Vault and the plugin even when every target is met
	scrapeEvery   time.Duration // instacart/metrics scrapes in scenario 10
}

// runs reports whether part is to run.
func (o options) runs(part string) bool { return len(o.only) == 0 || o.only[part] }

func main() {
	var opts options
	flag.DurationVar(&opts.duration, "duration", 2*time.Second, "measurement time per target, concurrency and round")
	flag.IntVar(&opts.rounds, "rounds", 5, "interleaved rounds per concurrency (medians are reported)")
	flag.DurationVar(&opts.latency, "latency", 50*time.Millisecond, "the Connect fake's delay per token request")
	flag.BoolVar(&opts.smoke, "smoke", false, "a few seconds' run: one short round, concurrency 1 and 8, no oauthapp, no Vault Agent")
	flag.StringVar(&opts.pluginBin, "plugin-bin", "", "use this prebuilt plugin binary (built with version "+pluginVer+") instead of building ./cmd/"+pluginName)
	flag.StringVar(&opts.out, "out", "bench/results", "directory for latest.md and latest.svg (relative to the repository root)")
	flag.IntVar(&opts.users, "users", 100_000, "distinct users in the per-user scenarios: scenario 10 on the dev server and its tidy on raft; scenario 8 on raft at most 100,000")
	flag.DurationVar(&opts.userLifetime, "user-token-lifetime", 2*time.Minute, "token lifetime during the per-user scenario (every token must expire before its tidy)")
	flag.BoolVar(&opts.raftOnly, "raft-only", false, "in the main part, run only the raft, Vault Proxy and per-user scenarios")
	only := flag.String("only", "", "run only these parts, comma-separated: main (scenarios 1-8), floor (9: cold per-user reads against the mint floor), users (10: -users shoppers on the dev server, then their tidy on raft), tidy (10's tidy on raft alone)")
	flag.DurationVar(&opts.floorDuration, "floor-duration", 4*time.Second, "scenario 9: measurement time per target, concurrency and round")
	flag.BoolVar(&opts.floorProfile, "floor-profile", false, "scenario 9: profile Vault and our plugin at the worst concurrency even when every target is met")
	flag.BoolVar(&opts.tidyProfile, "tidy-profile", false, "scenario 10 on raft: profile Vault (and, with -plugin-pprof, our plugin) for 15s of the tidy with no reads; the listings go to the -out directory")
	flag.BoolVar(&opts.pluginPprof, "plugin-pprof", false, "build our plugin from ./bench/profplugin (net/http/pprof on loopback) for every scenario; scenario 9 always uses that build, to profile the plugin on a miss")
	flag.Parse()
	if *only != "" {
		opts.only = map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			switch p = strings.TrimSpace(p); p {
			case "main", "floor", "users", "tidy":
				opts.only[p] = true
			default:
				fmt.Fprintf(os.Stderr, "bench: -only: unknown part %q (main, floor, users, tidy)\n", p)
				os.Exit(2)
			}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run executes the whole benchmark and returns the report's markdown.
func run(ctx context.Context, opts options, w io.Writer) (string, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	opts.concurrency = []int{1, 8, 32, 128}
	opts.coldReaders, opts.leaseReads, opts.warmup = 200, 1000, time.Second
	opts.userClients = 32
	opts.scrapeEvery = 15 * time.Second
	if opts.floorDuration <= 0 {
		opts.floorDuration = 4 * time.Second
	}
	if opts.smoke {
		opts.floorDuration, opts.scrapeEvery = 200*time.Millisecond, time.Second
		opts.rounds, opts.duration, opts.warmup = 1, 150*time.Millisecond, 100*time.Millisecond
		opts.concurrency = []int{1, 8}
		opts.leaseReads = 100
		opts.users, opts.userLifetime = 400, 3*time.Second
	}
	if opts.users < 1 || opts.userLifetime < 2*time.Second {
		return "", errors.New("-users must be positive and -user-token-lifetime at least 2s")
	}
	if opts.rounds < 1 || opts.duration <= 0 {
		return "", errors.New("-rounds and -duration must be positive")
	}
	var err error
	if opts.repo, err = repoRoot(); err != nil {
		return "", err
	}
	if opts.vaultBin = os.Getenv("VAULT_BIN"); opts.vaultBin == "" {
		opts.vaultBin = filepath.Join(opts.repo, ".bin", "vault")
	}
	if _, err := os.Stat(opts.vaultBin); err != nil {
		return "", fmt.Errorf("no Vault binary at %s: run `make vault` first: %w", opts.vaultBin, err)
	}
	if !filepath.IsAbs(opts.out) {
		opts.out = filepath.Join(opts.repo, opts.out)
	}

	dir, err := os.MkdirTemp("", "instacart-bench")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	started, loadStart := time.Now(), loadAvg()
	logf("==> building plugins and the Connect fake")
	bins, err := buildAll(ctx, opts.repo, dir, opts.pluginBin, !opts.smoke, opts.pluginPprof, opts.runs("floor"))
	if err != nil {
		return "", err
	}
	if bins.oauthappErr != nil && !opts.smoke {
		logf("    oauthapp not available: %v", bins.oauthappErr)
	}
	logf("==> starting the Connect fake (latency %s per token request)", opts.latency)
	f, err := stack.StartFake(stack.FakeOptions{Bin: bins.fake, Dir: dir, ClientID: fakeClientID, Latency: opts.latency})
	if err != nil {
		return "", err
	}
	defer f.Stop()
	rep := &report{opts: opts, started: started, loadStart: loadStart}
	if bins.oauthappErr != nil {
		rep.oauthappSkip = compact(bins.oauthappErr.Error())
	}
	if opts.runs("main") {
		if !opts.raftOnly {
			if err := runInmem(ctx, opts, bins, f, dir, logf, rep); err != nil {
				return "", err
			}
		}
		if err := runRaft(ctx, opts, bins, f, dir, logf, rep); err != nil {
			return "", err
		}
	}
	if opts.runs("floor") {
		if err := runFloor(ctx, opts, bins, f, dir, logf, rep); err != nil {
			return "", err
		}
	}
	if opts.runs("users") || opts.runs("tidy") {
		if err := runMany(ctx, opts, bins, f, dir, logf, rep); err != nil {
			return "", err
		}
	}
	rep.elapsed, rep.loadEnd = time.Since(started), loadAvg()

	md := rep.markdown()
	logf("\n%s", md)
	if err := os.MkdirAll(opts.out, 0o755); err != nil {
		return md, fmt.Errorf("results dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(opts.out, "latest.md"), []byte(md), 0o644); err != nil {
		return md, fmt.Errorf("writing report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(opts.out, "latest.svg"), []byte(rep.svg()), 0o644); err != nil {
		return md, fmt.Errorf("writing chart: %w", err)
	}
	if u := rep.users; u != nil && u.profile.err == "" && u.profile.top != "" {
		txt := "Vault CPU profile (sys/pprof/profile) during the per-user run, " + rep.started.UTC().Format("2006-01-02 15:04 MST") + "\n\n== by own time ==\n" + u.profile.top + "\n== by cumulative time ==\n" + u.profile.cum
		if err := os.WriteFile(filepath.Join(opts.out, profileFile), []byte(txt), 0o644); err != nil {
			return md, fmt.Errorf("writing profile: %w", err)
		}
	}
	for _, fr := range rep.floor {
		if fr.profiles == nil || fr.profiles[tOursCold].err != "" || fr.profiles[tFloor].err != "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(opts.out, floorProfileFile(fr.storage)), []byte(fr.profileText(rep.started)), 0o644); err != nil {
			return md, fmt.Errorf("writing profile: %w", err)
		}
	}
	logf("wrote %s and latest.svg", filepath.Join(opts.out, "latest.md"))
	return md, nil
}

// runInmem is scenarios 1-6 on the dev server (in-memory storage).
func runInmem(ctx context.Context, opts options, bins *binaries, f *stack.Fake, dir string, logf func(string, ...any), rep *report) error {
	logf("==> starting a dev Vault (in-memory storage)")
	v, err := startDevVault(opts.vaultBin, bins.pluginDir, dir)
	if err != nil {
		return err
	}
	defer v.Stop()
	r := &runner{opts: opts, storage: "inmem", bins: bins, vault: v, fake: f, load: newLoader(v.Token), dir: dir, logf: logf}
	if err := r.setup(); err != nil {
		return fmt.Errorf("setting up Vault: %w\n%s", err, v.Tail())
	}
	rep.machine = machine(v.Version())

	// Scenario 6, idle half: after set-up, before any load.
	time.Sleep(time.Second)
	pid, err := r.pluginPID()
	if err != nil {
		return err
	}
	if rep.rssIdle, err = stack.RSSBytes(pid); err != nil {
		return err
	}

	logf("==> scenarios 1-2 (inmem): cached reads, %d rounds x %s per target at concurrency %v", opts.rounds, opts.duration, opts.concurrency)
	sampler := startRSSSampler(pid)
	rep.ab, err = r.cachedReads(ctx)
	rep.rssPeak = peakOf(sampler.finish())
	if err != nil {
		return fmt.Errorf("cached reads: %w", err)
	}
	if rep.rssAfter, err = stack.RSSBytes(pid); err != nil {
		return err
	}

	reps := min(opts.rounds, 3)
	logf("==> scenario 3: cold start, %d concurrent readers x %d", opts.coldReaders, reps)
	if rep.cold, err = r.coldStart(ctx, opts.coldReaders, reps); err != nil {
		return fmt.Errorf("cold start: %w", err)
	}

	logf("==> scenario 4: exclusive mints")
	if rep.excl, err = r.exclusive(ctx); err != nil {
		return fmt.Errorf("exclusive mints: %w", err)
	}

	logf("==> scenario 5: lease volume, %d reads direct and through Vault Agent", opts.leaseReads)
	if rep.leases, err = r.leaseVolume(ctx, opts.leaseReads, !opts.smoke); err != nil {
		return fmt.Errorf("lease volume: %w", err)
	}

	logf("==> scenario 8, inmem part: cold per-user reads at 1, 8 and %d clients", opts.userClients)
	if rep.inmemUsers, err = r.coldUserReads(ctx, usersRole, coldSweep(opts, true)); err != nil {
		return fmt.Errorf("cold per-user reads: %w", err)
	}
	return nil
}

// coldSweep is how many new users the cold per-user read takes at each
// concurrency: a few seconds each (on raft the per-user run itself covers
// userClients).
func coldSweep(opts options, withMain bool) map[int]int {
	m := map[int]int{1: 200, 8: 1000}
	if withMain {
		m[opts.userClients] = min(opts.users, 5000)
	}
	if opts.smoke {
		m = map[int]int{1: 20, 8: 100}
		if withMain {
			m[opts.userClients] = 200
		}
	}
	return m
}

// maxRaftUsers bounds scenario 8 (raft, about 400 users/s): a larger -users
// goes to scenario 10.
const maxRaftUsers = 100_000

// runRaft is scenarios 7-8 on a single-node raft server: the cached reads
// again, with reads through Vault Proxy among them, then the per-user run.
func runRaft(ctx context.Context, opts options, bins *binaries, f *stack.Fake, dir string, logf func(string, ...any), rep *report) error {
	logf("==> starting a single-node Vault on integrated storage (raft) and Vault Proxy (examples/proxy/proxy.hcl)")
	v, err := startRaftVault(opts.vaultBin, bins.pluginDir, filepath.Join(dir, "raft-vault"))
	if err != nil {
		return err
	}
	defer v.Stop()
	r := &runner{opts: opts, storage: "raft", bins: bins, vault: v, fake: f, load: newLoader(v.Token), dir: dir, logf: logf}
	if err := r.setup(); err != nil {
		return fmt.Errorf("setting up the raft Vault: %w\n%s", err, v.Tail())
	}
	if err := r.setupRaft(); err != nil {
		return fmt.Errorf("setting up the raft Vault: %w\n%s", err, v.Tail())
	}
	defer r.proxy.Stop()
	if rep.machine.vaultVersion == "" {
		rep.machine = machine(v.Version())
	}

	logf("==> scenario 7 (raft): cached reads and reads through Vault Proxy, %d rounds x %s per target at concurrency %v", opts.rounds, opts.duration, opts.concurrency)
	if rep.raftAB, err = r.cachedReads(ctx, r.proxyTarget()); err != nil {
		return fmt.Errorf("cached reads on raft: %w", err)
	}
	if rep.proxy, err = r.proxyLeases(rep.raftAB); err != nil {
		return fmt.Errorf("counting the proxy's leases: %w", err)
	}
	r.proxy.Stop()

	logf("==> scenario 8 (raft): cold per-user reads at 1 and 8 clients (role %s)", probeRole)
	if rep.raftUsers, err = r.coldUserReads(ctx, probeRole, coldSweep(opts, false)); err != nil {
		return fmt.Errorf("cold per-user reads: %w", err)
	}
	// Scenario 10 takes -users past this on the dev server, and their tidy on raft.
	users := min(opts.users, maxRaftUsers)
	logf("==> scenario 8 (raft): %d distinct users on one assertion role, %d clients, tokens living %s", users, opts.userClients, opts.userLifetime)
	if rep.users, err = r.perUser(ctx, users, opts.userClients, opts.userLifetime); err != nil {
		return fmt.Errorf("per-user tokens: %w\n%s", err, v.Tail())
	}
	return nil
}

// repoRoot walks up from the working directory to the root module's go.mod,
// so both `go run ./bench` and `go test ./bench` find the repository.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module "+module+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the repository: no go.mod for " + module + " found")
		}
		dir = parent
	}
}

// compact makes a multi-line error fit in one markdown table cell.
func compact(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "|", "/")), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
