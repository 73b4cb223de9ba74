package stack

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWaitForTimesOut(t *testing.T) {
	start := time.Now()
	err := WaitFor(300*time.Millisecond, "never", func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "waiting for never") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
	if err := WaitFor(time.Second, "now", func() bool { return true }); err != nil {
		t.Errorf("a holding condition: %v", err)
	}
}

func TestFreePortIsBindable(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("port %d: %v", port, err)
	}
	ln.Close()
}

func TestFileSHA256AndRandomHex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum, err := FileSHA256(path)
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; err != nil || sum != want {
		t.Errorf("FileSHA256 = %q, %v; want %q", sum, err, want)
	}
	if a, b := RandomHex(8), RandomHex(8); len(a) != 16 || a == b {
		t.Errorf("RandomHex(8) = %q, %q", a, b)
	}
}

// TestFake builds cmd/connect-fake and drives its admin API as a process.
func TestFake(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/connect-fake")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "connect-fake")
	if err := GoBuild(context.Background(), filepath.Join("..", ".."), bin, "./cmd/connect-fake", ""); err != nil {
		t.Fatal(err)
	}
	f, err := StartFake(FakeOptions{Bin: bin, Dir: dir, ClientID: "unit-client", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()

	if b, err := os.ReadFile(f.SecretFile()); err != nil || string(b) != f.Secret() || f.Secret() == "" {
		t.Errorf("secret file does not hold the secret (%v)", err)
	}
	if _, err := f.Stats(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"reset":    f.Reset(),
		"lifetime": f.SetLifetime(2 * time.Minute),
		"latency":  f.SetLatency(time.Millisecond),
		"skew":     f.SetClockSkew(-time.Hour),
		"faults":   f.InjectFaults("/v2/oauth/token", map[string]any{"status": 503}),
		"clear":    f.ClearFaults(),
		"client":   f.AddClient("other", "other-secret"),
		"answer":   f.SetAnswerDelay(time.Millisecond),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The mint log names a minted token by TokenID, live, its answer sent.
	resp, err := http.Post(f.URL+"/v2/oauth/token", "application/json", strings.NewReader(
		`{"client_id":"other","client_secret":"other-secret","grant_type":"client_credentials"}`))
	if err != nil {
		t.Fatal(err)
	}
	var minted struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&minted)
	resp.Body.Close()
	mints, err := f.MintLog()
	if err != nil || len(mints) != 1 || mints[0].ID != TokenID(minted.AccessToken) || !mints[0].Live || mints[0].Outcome != "sent" {
		t.Errorf("mint log after one mint: %+v, %v", mints, err)
	}
	if held, err := f.Held(); err != nil || held != 0 {
		t.Errorf("held after the answer: %d, %v", held, err)
	}
	if code, err := f.Authorize("https://app.example/cb", "u1"); err != nil || code == "" {
		t.Errorf("authorize: %q, %v", code, err)
	}
	if _, err := f.TokenInfo("no-such-token"); err == nil {
		t.Error("an unknown token has info")
	}
	if st, err := f.Users("no-such-token"); err != nil || st != http.StatusUnauthorized {
		t.Errorf("users with a bogus token: %d, %v", st, err)
	}
	st, err := f.Stats()
	if err != nil || st.Requests["/v2/fulfillment/users"] != 1 {
		t.Errorf("stats after one users call: %+v, %v", st, err)
	}
	log, err := f.Log()
	if err != nil || !strings.Contains(log, "listening on "+f.URL) || strings.Contains(log, f.Secret()) {
		t.Errorf("fake log: %v, %d bytes, lacks the URL or holds the secret", err, len(log))
	}

	f.Stop()
	if !f.Exited() {
		t.Error("the fake still runs after Stop")
	}
	f.Stop() // twice is fine

	// A failed request's error names the path, never the token in it.
	const tok = "tok-must-not-be-printed"
	if _, err := f.TokenInfo(tok); err == nil || strings.Contains(err.Error(), tok) {
		t.Errorf("TokenInfo on a stopped fake: %v", err)
	}
}

func TestProcfs(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	procs, err := Procs(func(argv0 string) bool { return argv0 == os.Args[0] || argv0 == self })
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range procs {
		found = found || (p.Pid == os.Getpid() && p.PPid == os.Getppid())
	}
	if !found {
		t.Errorf("this test process (%d) is not among %+v", os.Getpid(), procs)
	}
	if rss, err := RSSBytes(os.Getpid()); err != nil || rss < 1<<20 {
		t.Errorf("RSS of this process: %d, %v", rss, err)
	}
	if !Alive(os.Getpid()) || Alive(1<<30) {
		t.Error("Alive is wrong about this process or a pid that cannot exist")
	}
}
