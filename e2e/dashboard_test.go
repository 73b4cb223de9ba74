//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dashboardMayBeEmpty are the panels of examples/grafana/dashboard.json
// that may rightly show no data, and why. Every other panel must return a
// series once a mount has served reads. None today: the retry series an
// operator watches (429, 503, network) exist at 0 from the start.
var dashboardMayBeEmpty = map[string]string{}

// dashboardSomeMounts are the panels that, in TestPrometheusScrapesVault,
// have series for some mounts only, and which. Every other panel with data
// must have a series for each mount: a query that loses the mount label, or
// filters it wrongly, fails.
var dashboardSomeMounts = map[string][]string{
	"Days until renew-by": {"instacart"}, // renew_by is written to instacart/config only
}

// What Grafana puts in place of its own variables, for queries sent straight
// to Prometheus: $__rate_interval is at least 4 scrape intervals (1m for
// the usual 15s), $__interval the step, $__range the dashboard's 6h.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m",
	"$__interval", "15s",
	"$__range", "6h",
)

type dashboardPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// checkDashboard runs every query of the shipped Grafana dashboard against
// Prometheus, as Grafana would with every mount chosen: each must run
// without error, and each panel not in dashboardMayBeEmpty must return a
// series. Then retried (after a 429) runs traffic that makes the rest have
// data, and they must return a series too: the list of panels that may be
// empty holds only those that need a retry.
func checkDashboard(t *testing.T, prom *promAPI, retried func()) {
	t.Helper()
	var d struct {
		Panels     []dashboardPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	path := filepath.Join(repoRoot, "examples", "grafana", "dashboard.json")
	if err := json.Unmarshal([]byte(readFileString(t, path)), &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}

	// $mount: label_values(<metric>, mount), as Grafana asks Prometheus for
	// it. Both mounts, and nothing else.
	i := slices.IndexFunc(d.Templating.List, func(v struct {
		Name  string `json:"name"`
		Query string `json:"query"`
	}) bool {
		return v.Name == "mount"
	})
	if i < 0 {
		t.Fatal("the dashboard has no mount variable")
	}
	m := regexp.MustCompile(`^label_values\((\w+), (\w+)\)$`).FindStringSubmatch(d.Templating.List[i].Query)
	if m == nil {
		t.Fatalf("mount variable query %q: want label_values(<metric>, <label>)", d.Templating.List[i].Query)
	}
	var mounts []string
	if err := prom.get(t, "/api/v1/label/"+m[2]+"/values", url.Values{"match[]": {m[1]}}, &mounts); err != nil {
		t.Fatalf("mount variable: %v", err)
	}
	if !slices.Equal(mounts, []string{"instacart", "instacart-eu"}) {
		t.Fatalf("mount variable's values %v, want [instacart instacart-eu]", mounts)
	}
	// Grafana's value for "All" (or both chosen) in a =~ matcher.
	quoted := make([]string, len(mounts))
	for i, mt := range mounts {
		quoted[i] = regexp.QuoteMeta(mt)
	}
	vars := strings.NewReplacer("$mount", "("+strings.Join(quoted, "|")+")")

	var panels []dashboardPanel
	for _, p := range d.Panels {
		if p.Type != "row" {
			panels = append(panels, p)
		}
	}
	for title := range dashboardMayBeEmpty {
		if !slices.ContainsFunc(panels, func(p dashboardPanel) bool { return p.Title == title }) {
			t.Errorf("dashboardMayBeEmpty names %q, which is no panel of the dashboard", title)
		}
	}
	exprs := func(p dashboardPanel) []string {
		var out []string
		for _, q := range p.Targets {
			e := grafanaVars.Replace(vars.Replace(q.Expr))
			if strings.Contains(e, "$") {
				t.Fatalf("panel %q: %q holds a variable this test does not know", p.Title, e)
			}
			out = append(out, e)
		}
		if len(out) == 0 {
			t.Fatalf("panel %q has no query", p.Title)
		}
		return out
	}
	// hasData waits (bounded) for every query of p to return a series for
	// each mount it should; a query Prometheus refuses fails the test at
	// once (promAPI.get).
	hasData := func(p dashboardPanel) {
		t.Helper()
		want := mounts
		if some, ok := dashboardSomeMounts[p.Title]; ok {
			want = some
		}
		for _, e := range exprs(p) {
			var got []promSample
			waitForProm(t, prom.proc, 30*time.Second, fmt.Sprintf("panel %q: %s returns series for %v", p.Title, e, want), func() (bool, string) {
				got = prom.query(t, e)
				var seen []string
				for _, s := range got {
					seen = append(seen, s.labels["mount"])
				}
				slices.Sort(seen)
				return slices.Equal(slices.Compact(seen), want), fmt.Sprint(got)
			})
			t.Logf("panel %q: %s: %v", p.Title, e, got)
		}
	}

	for _, p := range panels {
		if why, ok := dashboardMayBeEmpty[p.Title]; ok {
			for _, e := range exprs(p) {
				t.Logf("panel %q (may be empty: %s): %s: %v", p.Title, why, e, prom.query(t, e))
			}
			continue
		}
		hasData(p)
	}

	retried()
	for _, p := range panels {
		if _, ok := dashboardMayBeEmpty[p.Title]; ok {
			hasData(p)
		}
	}
}
