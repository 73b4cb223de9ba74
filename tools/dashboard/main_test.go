package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	committed = filepath.Join("..", "..", "examples", "grafana", "dashboard.json")
	docPage   = filepath.Join("..", "..", "docs", "dashboard.md")
)

// TestCommittedDashboardIsGenerated fails when examples/grafana/dashboard.json
// differs from what this program writes: a hand edit, or a code change
// without make dashboard.
func TestCommittedDashboardIsGenerated(t *testing.T) {
	want, err := render()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not what the generator writes: run make dashboard (and do not edit the file by hand)", committed)
	}
}

// dash is the part of the dashboard JSON the checks below read.
type dash struct {
	Panels []struct {
		Type        string `json:"type"`
		Title       string `json:"title"`
		Description string `json:"description"`
		Datasource  *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr       string `json:"expr"`
			RefID      string `json:"refId"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func load(t *testing.T) dash {
	t.Helper()
	body, err := render()
	if err != nil {
		t.Fatal(err)
	}
	var d dash
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPanelsServeEveryMount checks what makes the dashboard usable on any
// Grafana and any mount: a Prometheus data source variable and a mount
// variable, every query on the chosen data source and filtered by $mount,
// and a one-line description of what to look for on every panel.
func TestPanelsServeEveryMount(t *testing.T) {
	d := load(t)
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["mount"] != "query" {
		t.Fatalf("variables %v: want datasource (a data source variable) and mount (a query variable)", vars)
	}
	titles := map[string]bool{}
	panels := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		panels++
		if titles[p.Title] {
			t.Errorf("two panels are titled %q", p.Title)
		}
		titles[p.Title] = true
		if p.Description == "" || strings.Contains(p.Description, "\n") || strings.Contains(p.Description, "|") {
			t.Errorf("panel %q: description %q: want one line, without |, for the docs table", p.Title, p.Description)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %v, want ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if !strings.Contains(q.Expr, sel) || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %q on %q: want it filtered by %s on ${datasource}", p.Title, q.Expr, q.Datasource.UID, sel)
			}
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: refId %q missing or repeated", p.Title, q.RefID)
			}
			refs[q.RefID] = true
		}
	}
	if panels < 10 {
		t.Errorf("%d panels: the builder dropped some", panels)
	}
}

// TestDocsListEveryPanel keeps docs/dashboard.md's table in step with the
// panels: each has a row with its title and its description, word for word.
func TestDocsListEveryPanel(t *testing.T) {
	doc, err := os.ReadFile(docPage)
	if err != nil {
		t.Fatal(err)
	}
	// The panel table: from its header "| Panel |" to the first line that is
	// not a table row, less the header and its separator.
	rows, in := 0, false
	for _, l := range strings.Split(string(doc), "\n") {
		switch {
		case strings.HasPrefix(l, "| Panel |"):
			in = true
		case in && strings.HasPrefix(l, "|"):
			rows++
		case in:
			in = false
		}
	}
	rows-- // the separator line
	n := 0
	for _, p := range load(t).Panels {
		if p.Type == "row" {
			continue
		}
		n++
		row := "| " + p.Title + " | " + p.Description + " |"
		if !strings.Contains(string(doc), row) {
			t.Errorf("%s has no row\n%s", docPage, row)
		}
	}
	if rows != n {
		t.Errorf("%s: %d table rows, %d panels: remove the rows of panels that are gone", docPage, rows, n)
	}
}
