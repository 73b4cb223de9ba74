package main

// Scenario 9 in the report: the cold per-user read against the mint floor.

import (
	"fmt"
	"strings"
	"time"
)

// floorChecks are scenario 9's targets, one per storage, concurrency and
// measure: at 1, 8 and 32 clients, on inmem then raft, our cold per-user
// throughput at least the floor's ÷ 1.1 and our p99 at most 1.1× the
// floor's (9a-9l).
func (rep *report) floorChecks() []check {
	var cs []check
	for _, fr := range rep.floor {
		for _, c := range floorConc {
			tr, okT := fr.ab.ratio(tOursCold, tFloor, c, thr)
			pr, okP := fr.ab.ratio(tOursCold, tFloor, c, p99)
			ours, _ := fr.ab.stat(tOursCold, c)
			fl, _ := fr.ab.stat(tFloor, c)
			ct := check{target: fmt.Sprintf("%s, %d client(s): cold per-user throughput ≥ the mint floor's ÷ 1.1 (%.2f×)", fr.storage, c, 1/floorLimit),
				measured: fmt.Sprintf("%.2f× (%.0f vs %.0f users/s)", tr, ours.thr, fl.thr), result: verdict(okT && tr >= 1/floorLimit)}
			cp := check{target: fmt.Sprintf("%s, %d client(s): cold per-user p99 ≤ 1.1× the mint floor's", fr.storage, c),
				measured: fmt.Sprintf("%.2f× (%s vs %s)", pr, fmtDur(ours.p99), fmtDur(fl.p99)), result: verdict(okP && pr <= floorLimit)}
			for _, ck := range []*check{&ct, &cp} {
				if !okT || !okP {
					ck.measured = "not measured"
				}
				if ck.result == missed {
					ck.why = fr.why(c)
				}
			}
			cs = append(cs, ct, cp)
		}
	}
	for i := range cs {
		cs[i].id = fmt.Sprintf("9%c", 'a'+i)
	}
	return cs
}

// why explains a miss at c from the run's own figures: the per-round
// spread, the CPU per user by process, the storage calls per user and, when
// taken, Vault's profile.
func (fr *floorRun) why(c int) string {
	lo, hi := fr.ab.spread(tOursCold, tFloor, c, p99)
	tlo, thi := fr.ab.spread(tOursCold, tFloor, c, thr)
	ours, _ := fr.ab.stat(tOursCold, c)
	fl, _ := fr.ab.stat(tFloor, c)
	s := []string{fmt.Sprintf("At c=%d ours p50/p99 %s/%s at %.0f users/s, the floor %s/%s at %.0f users/s; per-round ratios p99 %.2f–%.2f×, throughput %.2f–%.2f×.",
		c, fmtDur(ours.p50), fmtDur(ours.p99), ours.thr, fmtDur(fl.p50), fmtDur(fl.p99), fl.thr, lo, hi, tlo, thi)}
	if co, cf := fr.cpu[tOursCold][c], fr.cpu[tFloor][c]; co != nil && cf != nil {
		s = append(s, fmt.Sprintf("CPU per user: Vault %s (floor %s), the plugin %s (the no-op plugin %s), the fake %s (%s).",
			fmtDur(co.perUser("Vault")), fmtDur(cf.perUser("Vault")), fmtDur(co.perUser("plugin")), fmtDur(cf.perUser("plugin")),
			fmtDur(co.perUser("Connect fake")), fmtDur(cf.perUser("Connect fake"))))
	}
	if w := fr.writesSentence(); w != "" {
		s = append(s, w)
	}
	if fr.profiles != nil {
		s = append(s, fmt.Sprintf("Vault's CPU profile at c=%d is in the section below.", fr.profC))
	}
	return strings.Join(s, " ")
}

// writesSentence compares storage calls per new user.
func (fr *floorRun) writesSentence() string {
	o, f := fr.writes[tOursCold], fr.writes[tFloor]
	if o == nil || f == nil {
		return ""
	}
	if fr.storage == "raft" {
		return fmt.Sprintf("Per new user, raft log entries applied: ours %.2f, floor %.2f (storage puts %.2f vs %.2f, deletes %.2f vs %.2f); barrier gets %.2f vs %.2f.",
			o.per(mRaftApply), f.per(mRaftApply), o.per(mRaftPut), f.per(mRaftPut), o.per(mRaftDelete), f.per(mRaftDelete), o.per(mBarGet), f.per(mBarGet))
	}
	return fmt.Sprintf("Per new user, storage puts: ours %.2f, floor %.2f; gets %.2f vs %.2f.", o.per(mBarPut), f.per(mBarPut), o.per(mBarGet), f.per(mBarGet))
}

// floorSection is scenario 9's part of the report.
func (rep *report) floorSection(p func(string, ...any)) {
	if len(rep.floor) == 0 {
		return
	}
	p("")
	p("## Cold per-user reads against the mint floor (scenario 9)")
	p("")
	p("The floor is the no-op plugin's `floor/creds/%s` ([`bench/noopplugin/floor.go`](../noopplugin/floor.go)): exactly what a first read for a new user cannot avoid, one token request to the same fake (`fulfillment_user_assertion`, the body the engine sends), one storage write (the token record, keyed by the user) and a leased response (TTL the token's remaining life). Ours is `instacart/creds/%s` (`allowed_user_ids='*'`, `token_reuse=shared`). Each server is fresh; every read is for a user id never seen before; %d interleaved round(s) × %s per target and concurrency; leases revoked between concurrencies. Ratios are ours ÷ floor, medians of per-round ratios.",
		usersRole, usersRole, rep.opts.rounds, rep.opts.floorDuration)
	p("")
	p("| storage | clients | ours users/s | floor users/s | throughput ours ÷ floor | ours p50 / p99 | floor p50 / p99 | p99 ours ÷ floor | errors ours / floor |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, fr := range rep.floor {
		for _, c := range floorConc {
			o, ok1 := fr.ab.stat(tOursCold, c)
			f, ok2 := fr.ab.stat(tFloor, c)
			if !ok1 || !ok2 {
				continue
			}
			tr, _ := fr.ab.ratio(tOursCold, tFloor, c, thr)
			pr, _ := fr.ab.ratio(tOursCold, tFloor, c, p99)
			p("| %s | %d | %.0f | %.0f | %.2f× %s | %s / %s | %s / %s | %.2f× %s | %d / %d |", fr.storage, c, o.thr, f.thr, tr, mark(tr >= 1/floorLimit),
				fmtDur(o.p50), fmtDur(o.p99), fmtDur(f.p50), fmtDur(f.p99), pr, mark(pr <= floorLimit), o.errs, f.errs)
		}
	}
	p("")
	p("CPU time per user served, by process (from /proc, summed over the rounds; the plugin is ours for ours, the no-op plugin for the floor):")
	p("")
	p("| storage | clients | read | Vault | plugin | Connect fake | load generator |")
	p("|---|---:|---|---:|---:|---:|---:|")
	for _, fr := range rep.floor {
		for _, c := range floorConc {
			for _, k := range []string{tOursCold, tFloor} {
				a := fr.cpu[k][c]
				if a == nil {
					continue
				}
				p("| %s | %d | %s | %s | %s | %s | %s |", fr.storage, c, k, fmtDur(a.perUser("Vault")), fmtDur(a.perUser("plugin")), fmtDur(a.perUser("Connect fake")), fmtDur(a.perUser("load generator")))
			}
		}
	}
	p("")
	p("### Storage writes per new user")
	p("")
	p("Counted by Vault's own cumulative telemetry (`sys/metrics?format=prometheus`) around a batch of new users at 8 clients (then 1.5 s for anything left to do, 0.3 s in a smoke run): on raft, `vault.raft.apply` is raft log entries (each a durable, fsync'd write) and `vault.raft-storage.put`/`delete` the storage calls that made them; the barrier counts every storage call on either backend. Vault's own lease write is in both columns; what ours has beyond the floor is what the engine adds to the one token record.")
	p("")
	p("| storage | read | users | raft entries applied | raft puts | raft deletes | raft transactions | barrier puts | barrier deletes | barrier gets | barrier lists |")
	p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, fr := range rep.floor {
		for _, k := range []string{tOursCold, tFloor} {
			w := fr.writes[k]
			if w == nil {
				continue
			}
			p("| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", fr.storage, k, w.users, w.per(mRaftApply), w.per(mRaftPut), w.per(mRaftDelete), w.per(mRaftTxn), w.per(mBarPut), w.per(mBarDelete), w.per(mBarGet), w.per(mBarList))
		}
	}
	for _, fr := range rep.floor {
		if o, f := fr.writes[tOursCold], fr.writes[tFloor]; o != nil && f != nil && fr.storage == "raft" {
			p("")
			p("On raft, per new user: **ours %.2f durable writes (raft entries), the floor %.2f**: the engine adds %.2f beyond the token record and the lease (Vault writes a lease as two entries: the lease and its index by token).", o.per(mRaftApply), f.per(mRaftApply), o.per(mRaftApply)-f.per(mRaftApply))
		}
	}
	for _, fr := range rep.floor {
		if fr.storage != "raft" || len(fr.newKeys) == 0 {
			continue // sys/raw lists keys on the raft server
		}
		p("")
		p("Storage keys one cold read added on %s (mount storage, and Vault's lease entries; hashes shortened; a key written over is not listed):", fr.storage)
		p("")
		for _, k := range []string{tOursCold, tFloor} {
			var ks []string
			for _, key := range fr.newKeys[k] {
				ks = append(ks, "`"+shortenHashes(key)+"`")
			}
			if len(ks) == 0 {
				ks = []string{"none"}
			}
			p("- %s: %s", k, strings.Join(ks, ", "))
		}
	}
	for _, fr := range rep.floor {
		if fr.profiles == nil {
			continue
		}
		p("")
		if _, missed := fr.worst(); missed {
			p("### Why ours missed on %s: Vault's CPU profile at %d clients", fr.storage, fr.profC)
		} else {
			p("### Where the time goes on %s (every target met; -floor-profile): Vault's CPU profile at %d clients", fr.storage, fr.profC)
		}
		p("")
		po, pf := fr.profiles[tOursCold], fr.profiles[tFloor]
		if po.err != "" || pf.err != "" {
			p("Profile not taken: %s %s", compact(po.err), compact(pf.err))
			continue
		}
		co, cf := fr.profCPU[tOursCold], fr.profCPU[tFloor]
		p("Taken through `sys/pprof/profile` while each read ran alone for %s (ours: %s; floor: %s). CPU per user during it: Vault %s vs %s, plugin %s vs %s (ours vs the no-op plugin), over %d and %d users. Share of Vault's CPU (cumulative):",
			po.took.Round(time.Second), po.total(), pf.total(), fmtDur(co.perUser("Vault")), fmtDur(cf.perUser("Vault")), fmtDur(co.perUser("plugin")), fmtDur(cf.perUser("plugin")), co.users, cf.users)
		p("")
		p("| where | ours | floor |")
		p("|---|---:|---:|")
		bo, bf := map[string]string{}, map[string]string{}
		for _, g := range po.breakdown() {
			bo[g[0]] = g[1]
		}
		for _, g := range pf.breakdown() {
			bf[g[0]] = g[1]
		}
		for _, r := range profileRows {
			name := fmt.Sprintf("%s (`%s`)", r[0], r[1])
			if bo[name] != "" || bf[name] != "" {
				p("| %s | %s | %s |", name, dash(bo[name]), dash(bf[name]))
			}
		}
		if pp := fr.pluginProfile; pp != nil {
			p("")
			if pp.err != "" {
				p("Our plugin's own profile: not taken (%s).", compact(pp.err))
			} else {
				p("Our plugin's own CPU profile during ours (`-plugin-pprof`: the engine built from `bench/profplugin` with net/http/pprof; %s). Share of the plugin's CPU (cumulative):", pp.total())
				p("")
				p("| where | share |")
				p("|---|---:|")
				for _, g := range pp.breakdownOf(pluginRows) {
					p("| %s | %s |", g[0], g[1])
				}
				p("")
				p("The engine's and the SDK's frames by cumulative share:")
				p("")
				p("```text")
				for _, l := range pp.frames(20, "instacart-vault", "vault/sdk", "connect", "grpc") {
					p("%s", l)
				}
				p("```")
			}
		}
		p("")
		p("Full listings: [`%s`](%s).", floorProfileFile(fr.storage), floorProfileFile(fr.storage))
	}
}

// pluginRows are the frames of our plugin's profile the report names: what
// a cold per-user read does beyond the floor's mint, write and lease.
var pluginRows = [][2]string{
	{"storage reads (gRPC to Vault)", "github.com/hashicorp/vault/sdk/plugin.(*GRPCStorageClient).Get"},
	{"… of which the token cache's loads", "github.com/instacart-vault/vault-plugin-secrets-instacart.(*tokenCache).load"},
	{"storage writes (gRPC to Vault)", "github.com/hashicorp/vault/sdk/plugin.(*GRPCStorageClient).Put"},
	{"the token request (connect client)", "github.com/instacart-vault/vault-plugin-secrets-instacart/connect.(*Client).Token"},
	{"… of which go-retryablehttp", "github.com/hashicorp/go-retryablehttp.(*Client).Do"},
	{"the per-mint log line (debug level)", "github.com/instacart-vault/vault-plugin-secrets-instacart.(*metrics).logMint"},
	{"publishing the token (role lock, predecessor check, store)", "github.com/instacart-vault/vault-plugin-secrets-instacart.(*backend).publishShared"},
	{"garbage collection", "runtime.gcBgMarkWorker"},
}

func floorProfileFile(storage string) string { return "vault-cpu-floor-" + storage + ".txt" }

// profileText is the full listing of both profiles of a floor run.
func (fr *floorRun) profileText(started time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Vault CPU profiles (sys/pprof/profile) on %s at %d clients, %s: our cold per-user read, then the mint floor's\n", fr.storage, fr.profC, started.UTC().Format("2006-01-02 15:04 MST"))
	for _, k := range []string{tOursCold, tFloor} {
		pr := fr.profiles[k]
		fmt.Fprintf(&b, "\n======== Vault during %s ========\n== by own time ==\n%s\n== by cumulative time ==\n%s", k, pr.top, pr.cum)
	}
	if pp := fr.pluginProfile; pp != nil && pp.err == "" {
		fmt.Fprintf(&b, "\n======== our plugin during %s ========\n== by own time ==\n%s\n== by cumulative time ==\n%s", tOursCold, pp.top, pp.cum)
	}
	return b.String()
}

func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// shortenHashes cuts every path segment of 24 characters or more (hashes,
// lease ids) to its first 12.
func shortenHashes(key string) string {
	parts := strings.Split(key, "/")
	for i, s := range parts {
		if len(s) >= 24 {
			parts[i] = s[:min(len(s), 12)] + "…"
		}
	}
	return strings.Join(parts, "/")
}

// frames are the first n lines of the cumulative listing whose function
// names contain any of subs, with the listing's header line.
func (p cpuProfile) frames(n int, subs ...string) []string {
	var out []string
	for _, line := range strings.Split(p.cum, "\n") {
		if strings.Contains(line, "flat%") {
			out = append(out, line)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasSuffix(f[4], "%") {
			continue
		}
		for _, s := range subs {
			if strings.Contains(strings.Join(f[5:], " "), s) {
				out = append(out, line)
				break
			}
		}
		if len(out) > n {
			break
		}
	}
	return out
}
