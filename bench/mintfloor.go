package main

// The cold per-user read against its floor: the no-op plugin's
// floor/creds/<role> (bench/noopplugin/floor.go) makes the one token request,
// the one storage write and the one lease that a first read for a new user
// cannot avoid. Both run on fresh servers (inmem, then raft) against the same
// fake, in interleaved rounds at 1, 8 and 32 clients, every user id new.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

const (
	tOursCold = "ours-cold"
	tFloor    = "floor"
	// floorLimit is the target: ours within 1.1× of the floor.
	floorLimit = 1.1
)

// floorConc are the concurrencies of the comparison.
var floorConc = []int{1, 8, 32}

// floorRun is the comparison on one server.
type floorRun struct {
	storage string
	ab      *abResult
	// cpu is CPU time per process and users served, per target and
	// concurrency, summed over rounds.
	cpu map[string]map[int]*cpuAcc
	// writes are storage operations per new user, counted by Vault.
	writes map[string]*writeCount
	// newKeys are the storage keys one cold read added (raft only).
	newKeys map[string][]string
	// On a miss: Vault's CPU profile during each target at profC clients.
	profC    int
	profiles map[string]cpuProfile
	profCPU  map[string]*cpuAcc
	// pluginProfile is our plugin's own CPU profile during ours at profC
	// (ours is the ./bench/profplugin build unless -plugin-bin).
	pluginProfile *cpuProfile
}

// cpuAcc is CPU used per process while serving users.
type cpuAcc struct {
	procs map[string]time.Duration
	users int
	wall  time.Duration
}

func (a *cpuAcc) add(u cpuUse, users int) {
	if a.procs == nil {
		a.procs = map[string]time.Duration{}
	}
	for n, d := range u.procs {
		a.procs[n] += d
	}
	a.users += users
	a.wall += u.wall
}

func (a *cpuAcc) perUser(name string) time.Duration {
	if a == nil || a.users == 0 {
		return 0
	}
	return a.procs[name] / time.Duration(a.users)
}

// floorTargets are our cold per-user read and the floor's.
func floorTargets() []target {
	return []target{
		{key: tOursCold, label: "instacart/creds/" + usersRole + " (new user each)", path: "instacart/creds/" + usersRole},
		{key: tFloor, label: "noop/floor/creds/" + usersRole + " (the floor)", path: "noop/floor/creds/" + usersRole},
	}
}

// runFloor starts a dev server and a raft server in turn, each fresh, and
// runs the comparison on each.
func runFloor(ctx context.Context, opts options, bins *binaries, f *stack.Fake, dir string, logf func(string, ...any), rep *report) error {
	if bins.floorPluginDir != "" {
		fb := *bins
		fb.pluginDir = bins.floorPluginDir
		bins = &fb
	}
	for _, storage := range []string{"inmem", "raft"} {
		var (
			v   *vault
			err error
		)
		logf("==> scenario 9 (%s): cold per-user reads against the mint floor, %d rounds x %s per target at %v clients", storage, opts.rounds, opts.floorDuration, floorConc)
		if storage == "inmem" {
			v, err = startDevVaultRaw(opts.vaultBin, bins.pluginDir, filepath.Join(dir, "floor-inmem"))
		} else {
			// Prometheus telemetry: cumulative counts of raft log entries.
			v, err = startRaftVaultWith(stack.RaftVaultOptions{Bin: opts.vaultBin, PluginDir: bins.pluginDir, Dir: filepath.Join(dir, "floor-raft"), PrometheusRetention: "1h"})
		}
		if err != nil {
			return err
		}
		r := &runner{opts: opts, storage: storage, bins: bins, vault: v, fake: f, load: newLoader(v.Token), dir: dir, logf: logf}
		if rep.machine.vaultVersion == "" {
			rep.machine = machine(v.Version())
		}
		fr, err := r.floorCompare(ctx)
		v.Stop()
		if err != nil {
			return fmt.Errorf("mint floor on %s: %w", storage, err)
		}
		rep.floor = append(rep.floor, fr)
	}
	return nil
}

// setupFloor configures our plugin (config and the assertion role) and the
// no-op plugin's floor, both against the fake.
func (r *runner) setupFloor() error {
	v, f := r.vault, r.fake
	v.Secrets = append(v.Secrets, f.Secret())
	if err := r.setupEngine(); err != nil {
		return err
	}
	if err := v.Register(r.bins.pluginDir, noopName, ""); err != nil {
		return err
	}
	if err := v.Enable("noop", noopName, "", nil); err != nil {
		return err
	}
	if err := v.Must(http.MethodPut, "noop/floor/config", map[string]any{"client_id": fakeClientID, "client_secret": f.Secret(), "base_url": f.URL}, nil); err != nil {
		return fmt.Errorf("configuring the floor: %w", err)
	}
	return nil
}

// setupEngine mounts our plugin with the fake's credentials, the per-user
// assertion role and the role-wide bench role.
func (r *runner) setupEngine() error {
	v, f := r.vault, r.fake
	if err := v.Register(r.bins.pluginDir, pluginName, pluginVer); err != nil {
		return err
	}
	if err := v.Enable("instacart", pluginName, pluginVer, nil); err != nil {
		return err
	}
	for _, s := range []struct {
		path string
		body map[string]any
	}{
		{"instacart/config", map[string]any{"client_id": fakeClientID, "client_secret": f.Secret(), "base_url": f.URL}},
		{"instacart/roles/bench", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}},
		{"instacart/roles/" + usersRole, map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*", "token_reuse": "shared"}},
	} {
		if err := v.Must(http.MethodPut, s.path, s.body, nil); err != nil {
			return fmt.Errorf("configuring our plugin: %w", err)
		}
	}
	return nil
}

// startDevVaultRaw is a dev server with sys/raw on, to count stored tokens.
func startDevVaultRaw(bin, pluginDir, dir string) (*vault, error) {
	if err := mkdir(dir); err != nil {
		return nil, err
	}
	v, err := stack.StartDevVault(stack.DevVaultOptions{Bin: bin, PluginDir: pluginDir, Dir: dir, LogLevel: "warn", RawStorage: true})
	if err != nil {
		return nil, err
	}
	return &vault{v}, nil
}

// newUsers hands out user ids never used before on this server.
type newUsers struct {
	prefix string
	next   atomic.Int64
}

func (u *newUsers) id() string { return fmt.Sprintf("%s-%08d", u.prefix, u.next.Add(1)) }

// coldRead is one read of t for a new user.
func (r *runner) coldRead(ctx context.Context, t target, ids *newUsers) (bool, string) {
	body, _ := json.Marshal(map[string]string{"user_id": ids.id()})
	return r.load.do(ctx, http.MethodPost, r.url(t.path), body, nil)
}

// coldRun has c clients read t for d, each read for a new user, and
// measures the CPU the processes used meanwhile.
func (r *runner) coldRun(ctx context.Context, t target, ids *newUsers, c int, d time.Duration, procs map[string]int) (sample, cpuUse) {
	cpu0 := readCPU(procs)
	s := runEach(ctx, c, d, 0, func(ctx context.Context, _ int) (bool, string) { return r.coldRead(ctx, t, ids) })
	s.firstErr = r.vault.Redact(s.firstErr)
	return s, readCPU(procs).since(cpu0)
}

func (r *runner) floorCompare(ctx context.Context) (*floorRun, error) {
	v := r.vault
	if err := r.setupFloor(); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, v.Tail())
	}
	res := &floorRun{storage: r.storage, ab: &abResult{conc: floorConc, samples: map[string]map[int][]sample{}, targets: floorTargets()},
		cpu: map[string]map[int]*cpuAcc{}, writes: map[string]*writeCount{}, newKeys: map[string][]string{}}
	ids := &newUsers{prefix: "floor-" + r.storage}
	// Warm-up: connections, code paths, the plugins' processes.
	for _, t := range res.ab.targets {
		res.ab.samples[t.key] = map[int][]sample{}
		res.cpu[t.key] = map[int]*cpuAcc{}
		if s := runEach(ctx, 8, r.opts.warmup, 0, func(ctx context.Context, _ int) (bool, string) { return r.coldRead(ctx, t, ids) }); s.ok == 0 {
			return nil, fmt.Errorf("warm-up of %s: no successful read (%d errors, first: %s)", t.path, s.errs, v.Redact(s.firstErr))
		}
	}
	ours, err := findPluginPID(filepath.Join(r.bins.pluginDir, pluginName), v.Proc.Pid())
	if err != nil {
		return nil, err
	}
	noop, err := findPluginPID(filepath.Join(r.bins.pluginDir, noopName), v.Proc.Pid())
	if err != nil {
		return nil, err
	}
	procsFor := map[string]map[string]int{
		tOursCold: {"Vault": v.Proc.Pid(), "plugin": ours, "Connect fake": r.fake.Pid(), "load generator": pidSelf()},
		tFloor:    {"Vault": v.Proc.Pid(), "plugin": noop, "Connect fake": r.fake.Pid(), "load generator": pidSelf()},
	}

	// What one cold read leaves in storage (raft: sys/raw is on).
	for _, t := range res.ab.targets {
		keys, err := r.newKeysOfOneRead(ctx, t, ids)
		if err != nil {
			return nil, err
		}
		res.newKeys[t.key] = keys
	}
	// Storage operations per new user, from Vault's cumulative counters.
	n := 300
	if r.opts.smoke {
		n = 30
	}
	for _, t := range res.ab.targets {
		w, err := r.countWrites(ctx, t, ids, n)
		if err != nil {
			return nil, err
		}
		res.writes[t.key] = w
		r.logf("  %s %s: per new user %.2f raft entries applied, %.2f raft puts, %.2f raft deletes; barrier %.2f puts, %.2f gets", r.storage, t.key,
			w.per(mRaftApply), w.per(mRaftPut), w.per(mRaftDelete), w.per(mBarPut), w.per(mBarGet))
	}
	if err := r.revokeFloorLeases(); err != nil {
		return nil, err
	}

	active := res.ab.targets
	for _, c := range floorConc {
		for round := range r.opts.rounds {
			for i := range active {
				t := active[(i+round)%len(active)]
				s, cpu := r.coldRun(ctx, t, ids, c, r.opts.floorDuration, procsFor[t.key])
				if s.errs > 0 {
					r.logf("  %s c=%d: %d errors (first: %s)", t.path, c, s.errs, s.firstErr)
				}
				res.ab.samples[t.key][c] = append(res.ab.samples[t.key][c], s)
				if res.cpu[t.key][c] == nil {
					res.cpu[t.key][c] = &cpuAcc{}
				}
				res.cpu[t.key][c].add(cpu, s.ok)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		t0 := time.Now()
		if err := r.revokeFloorLeases(); err != nil {
			return nil, err
		}
		pr, _ := res.ab.ratio(tOursCold, tFloor, c, p99)
		tr, _ := res.ab.ratio(tOursCold, tFloor, c, thr)
		r.logf("  %s c=%-2d %s ours÷floor: p99 %.2f×, throughput %.2f× (leases revoked in %s)", r.storage, c, res.ab.summaryLine(c), pr, tr, time.Since(t0).Round(time.Millisecond))
	}

	// A miss is explained with Vault's CPU profile during each target, and
	// the plugin's during ours, at the concurrency where ours fell furthest
	// behind (with -floor-profile, a run that met every target too).
	if c, missed := res.worst(); (missed || r.opts.floorProfile) && !r.opts.smoke {
		res.profC, res.profiles, res.profCPU = c, map[string]cpuProfile{}, map[string]*cpuAcc{}
		d := 10 * time.Second
		if r.opts.smoke {
			d = time.Second
		}
		for _, t := range active {
			r.logf("  %s: profiling Vault for %s during %s at c=%d", r.storage, d, t.key, c)
			file := filepath.Join(r.dir, fmt.Sprintf("vault-cpu-floor-%s-%s.pb.gz", r.storage, t.key))
			prof := profileVault(ctx, v, 0, d, file)
			var pprof <-chan cpuProfile
			if u := r.pluginPprofURL(ours); u != "" && t.key == tOursCold {
				pprof = profileURL(ctx, r.load.client, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", u, int(d/time.Second)), "", v.Redact, 0,
					filepath.Join(r.dir, fmt.Sprintf("plugin-cpu-floor-%s.pb.gz", r.storage)))
			}
			s, cpu := r.coldRun(ctx, t, ids, c, d+time.Second, procsFor[t.key])
			res.profiles[t.key] = <-prof
			if pprof != nil {
				pp := <-pprof
				res.pluginProfile = &pp
			}
			res.profCPU[t.key] = &cpuAcc{}
			res.profCPU[t.key].add(cpu, s.ok)
		}
		if err := r.revokeFloorLeases(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// settle is how long storage counts wait after the reads for anything they
// left to do after answering.
func (r *runner) settle() time.Duration {
	if r.opts.smoke {
		return 300 * time.Millisecond
	}
	return 1500 * time.Millisecond
}

// worst is the concurrency where ours is furthest from the floor, and
// whether any target missed there.
func (fr *floorRun) worst() (int, bool) {
	worstC, worst, missed := floorConc[0], 0.0, false
	for _, c := range floorConc {
		pr, ok1 := fr.ab.ratio(tOursCold, tFloor, c, p99)
		tr, ok2 := fr.ab.ratio(tOursCold, tFloor, c, thr)
		if !ok1 || !ok2 || tr == 0 {
			continue
		}
		if x := max(pr, 1/tr); x > worst {
			worst, worstC = x, c
		}
		if pr > floorLimit || 1/tr > floorLimit {
			missed = true
		}
	}
	return worstC, missed
}

func (r *runner) revokeFloorLeases() error {
	for _, t := range floorTargets() {
		if err := r.vault.revokePrefix(t.path + "/"); err != nil {
			return fmt.Errorf("cleaning up leases: %w", err)
		}
	}
	return nil
}
