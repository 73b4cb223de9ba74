// Command dashboard writes the Grafana dashboard of the Instacart secrets
// engine (examples/grafana/dashboard.json) from code, so its queries use the
// metric names of metrics.go and the mount label of
// examples/prometheus/prometheus.yml, and it is regenerated, never edited
// by hand (make dashboard; a test compares the committed file with this
// program's output).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// uid is the dashboard's fixed uid: an import or provisioning of a newer
// version replaces the older one instead of adding a copy.
const uid = "instacart-secrets-engine"

// sel selects the series of the mounts chosen in $mount. The label comes
// from the relabelling in examples/prometheus/prometheus.yml (instacart for
// /v1/instacart/metrics); =~ because $mount is multi-valued.
const sel = `mount=~"$mount"`

// ds is every query's data source: the one chosen in $datasource.
var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func main() {
	out := flag.String("out", "", "file to write the dashboard JSON to (default: standard output)")
	flag.Parse()
	body, err := render()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
	if *out == "" {
		_, err = os.Stdout.Write(body)
	} else {
		err = os.WriteFile(*out, body, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard: write:", err)
		os.Exit(1)
	}
}

// render is the dashboard as committed: indented JSON ending in a newline.
func render() ([]byte, error) {
	d, err := build()
	if err != nil {
		return nil, fmt.Errorf("build dashboard: %w", err)
	}
	body, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode dashboard: %w", err)
	}
	return append(body, '\n'), nil
}

// ids numbers panels and rows in order, so the JSON is the same at every run.
type ids struct{ n uint32 }

func (i *ids) next() uint32 { i.n++; return i.n }

func build() (dashboard.Dashboard, error) {
	var id ids
	b := dashboard.NewDashboardBuilder("Instacart secrets engine").
		Uid(uid).
		Description("Reads, Connect token requests, revocations and stored tokens of the Instacart secrets engine, per Vault mount (docs/dashboard.md).").
		Tags([]string{"vault", "instacart"}).
		Editable().
		Refresh("1m").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").
			Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("mount").
			Label("Mount").
			Description("Vault mounts of the engine, from the mount label the example scrape job adds").
			Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(instacart_build_info, mount)")}).
			Definition("label_values(instacart_build_info, mount)").
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).
			IncludeAll(true))

	b.WithRow(dashboard.NewRowBuilder("Health").Id(id.next()))
	b.WithPanel(statPanel(&id, "Build version",
		"The plugin version each mount runs: after an upgrade every mount should show the new one (vault secrets tune -plugin-version, then vault plugin reload).",
		"none", common.BigValueTextModeName,
		query(`max by (mount, version) (instacart_build_info{`+sel+`})`, "{{mount}}: {{version}}")))
	b.WithPanel(statPanel(&id, "Scrape up",
		"1 when Prometheus can read the mount's metrics path; 0 means every other panel is stale: see the InstacartMetricsTargetDown alert for the causes.",
		"none", common.BigValueTextModeValueAndName,
		query(`min by (mount) (up{`+sel+`})`, "{{mount}}")).
		Thresholds(steps(step(nil, "red"), step(cog.ToPtr(1.0), "green"))))
	b.WithPanel(statPanel(&id, "Days until renew-by",
		"Days left before Instacart wants the credentials rotated (renew_by in config); below 14 the InstacartCredentialsRenewBy alert fires, so rotate now.",
		"d", common.BigValueTextModeValueAndName,
		query(`min by (mount) (instacart_credentials_renew_by_timestamp_seconds{`+sel+`} - time()) / 86400`, "{{mount}}")).
		Decimals(1).
		Thresholds(steps(step(nil, "red"), step(cog.ToPtr(14.0), "orange"), step(cog.ToPtr(30.0), "green"))))
	b.WithPanel(statPanel(&id, "Gauge refresh errors",
		"Scrapes that could not rebuild the gauges from storage in the time range; above 0, stored-token and pending counts may be stale: check Vault's storage.",
		"short", common.BigValueTextModeValueAndName,
		query(`sum by (mount) (increase(instacart_gauge_refresh_errors_total{`+sel+`}[$__range]))`, "{{mount}}")).
		Thresholds(steps(step(nil, "green"), step(cog.ToPtr(1.0), "red"))))

	b.WithRow(dashboard.NewRowBuilder("Reads").Id(id.next()))
	b.WithPanel(tsPanel(&id, "Reads by source",
		"Where creds reads got their token: mostly memory for shared roles; a rise in minted means more Connect calls, any stale_while_down means Connect is failing.",
		"reqps",
		query(`sum by (mount, source) (rate(instacart_creds_reads_total{`+sel+`}[$__rate_interval]))`, "{{mount}} {{source}}")))
	b.WithPanel(tsPanel(&id, "Reads by role",
		"Successful creds reads per role: which applications lean on the engine; a role whose reads stop while its callers still need tokens has them failing (Vault's audit log shows why).",
		"reqps",
		query(`sum by (mount, role) (rate(instacart_creds_reads_total{`+sel+`}[$__rate_interval]))`, "{{mount}} {{role}}")))

	b.WithRow(dashboard.NewRowBuilder("Instacart Connect").Id(id.next()))
	b.WithPanel(tsPanel(&id, "Token requests by outcome",
		"Token requests (attempts, retries included) sent to Connect: rejected needs new credentials or role scopes (or a user's code was bad); transient_error and timeout mean Connect is failing.",
		"reqps",
		query(`sum by (mount, outcome) (rate(instacart_token_requests_total{`+sel+`}[$__rate_interval]))`, "{{mount}} {{outcome}}")))
	b.WithPanel(tsPanel(&id, "Failed token requests by role",
		"Token requests that got no token, per role and outcome: names the role an InstacartTokenRequestsRejected alert is about (@verify is a config write's check).",
		"reqps",
		query(`sum by (mount, role, outcome) (rate(instacart_token_requests_total{`+sel+`, outcome!="minted"}[$__rate_interval]))`, "{{mount}} {{role}} {{outcome}}")))
	b.WithPanel(tsPanel(&id, "Connect latency",
		"p50, p90 and p99 of each HTTP request to Connect, by endpoint: a p99 near request_timeout (config) means timeouts are next.",
		"s",
		quantile("A", 0.5), quantile("B", 0.9), quantile("C", 0.99)))
	b.WithPanel(tsPanel(&id, "Retries by status",
		"Requests to Connect retried, by the status that caused it (network: no answer): a steady stream means Connect is degraded; the plugin logs 'Connect is failing, retrying'.",
		"reqps",
		query(`sum by (mount, status) (rate(instacart_upstream_retries_total{`+sel+`}[$__rate_interval]))`, "{{mount}} {{status}}")))
	// The raw counter, not increase(): the series appears with the first
	// retry after a 429, at 1, and increase() cannot see that first one.
	b.WithPanel(statPanel(&id, "429 pauses",
		"Requests retried after Connect answered 429, since the plugin started: each waited its Retry-After (at most 30 s), a token 429 holding back all the mount's token requests; rising means reads outpace Connect's limit.",
		"short", common.BigValueTextModeValueAndName,
		query(`sum by (mount) (instacart_upstream_retries_total{`+sel+`, status="429"})`, "{{mount}}")).
		Thresholds(steps(step(nil, "green"), step(cog.ToPtr(1.0), "orange"))))

	// The gauges count storage, which every node of a cluster that reports
	// them shares: max, not sum, so two reporting nodes are not counted twice.
	b.WithRow(dashboard.NewRowBuilder("Revocations and stored tokens").Id(id.next()))
	b.WithPanel(tsPanel(&id, "Revocations by outcome",
		"How revocations ended: error (retried every minute) or refused (valid until expiry) that persists fires InstacartRevocationsFailing; set_aside needs an operator.",
		"ops",
		query(`sum by (mount, outcome) (rate(instacart_revocations_total{`+sel+`}[$__rate_interval]))`, "{{mount}} {{outcome}}")))
	b.WithPanel(tsPanel(&id, "Pending revocations",
		"Tokens queued for revocation per role: the queue empties within a minute while Connect takes revocations; one that stays above 0 holds tokens still valid.",
		"short",
		query(`max by (mount, role) (instacart_pending_revocations{`+sel+`})`, "{{mount}} {{role}}")))
	b.WithPanel(tsPanel(&id, "Stored tokens",
		"Shared tokens held in storage per shared role (one per user for per-user roles, expired ones until tidy removes them): growth beyond your users means tidy is not running.",
		"short",
		query(`max by (mount, role) (instacart_shared_tokens{`+sel+`})`, "{{mount}} {{role}}")))
	b.WithPanel(tsPanel(&id, "Shared token time left",
		"Time until each role-wide shared token expires: a read replaces it once less than min_remaining_ttl is left, so lower means the role is not read or minting fails; negative: expired, kept until tidy.",
		"s",
		query(`min by (mount, role) (instacart_shared_token_expiry_timestamp_seconds{`+sel+`}) - time()`, "{{mount}} {{role}}")))
	return b.Build()
}

// query is a Prometheus query of the panel's data source.
func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(ds).RefId("A").Expr(expr).LegendFormat(legend)
}

// quantile is the q-quantile of Connect request durations, per endpoint.
func quantile(ref string, q float64) *prometheus.DataqueryBuilder {
	expr := fmt.Sprintf(`histogram_quantile(%g, sum by (mount, endpoint, le) (rate(instacart_upstream_request_duration_seconds_bucket{%s}[$__rate_interval])))`, q, sel)
	return query(expr, fmt.Sprintf("p%g {{mount}} {{endpoint}}", q*100)).RefId(ref)
}

func tsPanel(id *ids, title, desc, unit string, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Id(id.next()).Title(title).Description(desc).
		Datasource(ds).Unit(unit).Height(8).Span(12).
		FillOpacity(10).ShowPoints(common.VisibilityModeNever).
		Legend(common.NewVizLegendOptionsBuilder().
			DisplayMode(common.LegendDisplayModeList).
			Placement(common.LegendPlacementBottom).
			ShowLegend(true)).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending))
	for _, t := range targets {
		p.WithTarget(t)
	}
	return p
}

func statPanel(id *ids, title, desc, unit string, mode common.BigValueTextMode, target *prometheus.DataqueryBuilder) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Id(id.next()).Title(title).Description(desc).
		Datasource(ds).Unit(unit).Height(5).Span(6).
		TextMode(mode).
		Orientation(common.VizOrientationAuto).
		ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeNone).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		WithTarget(target.Instant())
}

func step(value *float64, color string) dashboard.Threshold {
	return dashboard.Threshold{Value: value, Color: color}
}

func steps(s ...dashboard.Threshold) *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(s)
}
