// Package dashboard tests the Grafana dashboard of the chart
// (charts/weir/dashboards/weir.json): every metric its queries name is in
// the README's metric tables and defined in the code, and every query runs
// in a real Prometheus that scrapes a real reducer and collector carrying
// real traffic, with data where the traffic must give some.
package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// root is the repository's top directory.
const root = "../.."

var dashboardPath = filepath.Join(root, "charts", "weir", "dashboards", "weir.json")

// query is one PromQL expression of the dashboard and where it is.
type query struct {
	panel string
	ref   string
	expr  string
}

func loadDashboard(t *testing.T) (map[string]any, []query) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []query
	var walk func(v any, panel string)
	walk = func(v any, panel string) {
		switch x := v.(type) {
		case map[string]any:
			if title, ok := x["title"].(string); ok && x["gridPos"] != nil {
				panel = title
			}
			if expr, ok := x["expr"].(string); ok {
				ref, _ := x["refId"].(string)
				qs = append(qs, query{panel: panel, ref: ref, expr: expr})
			}
			if def, ok := x["definition"].(string); ok {
				qs = append(qs, query{panel: "variable " + fmt.Sprint(x["name"]), ref: "A", expr: def})
			}
			for _, c := range x {
				walk(c, panel)
			}
		case []any:
			for _, c := range x {
				walk(c, panel)
			}
		}
	}
	walk(d, "")
	return d, qs
}

// contract reads the metric names of the README's tables (and lists):
// every backquoted weir_* name, with whether its table row says histogram.
func contract(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{} // name → histogram
	re := regexp.MustCompile("`(weir_[a-z0-9_]+)(\\{[^`]*\\})?`")
	for _, line := range strings.Split(string(b), "\n") {
		hist := strings.HasPrefix(line, "|") && strings.Contains(line, "| histogram |")
		for _, m := range re.FindAllStringSubmatch(line, -1) {
			names[m[1]] = names[m[1]] || hist
		}
	}
	if len(names) < 100 {
		t.Fatalf("found %d metric names in README.md: the parser is off", len(names))
	}
	return names
}

// codeNames returns every "weir_*" string literal of the non-test Go files
// of the binaries' modules.
func codeNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`"(weir_[a-z0-9_]+)"`)
	for _, mod := range []string{"collector", "reducer", "k8s-watcher"} {
		err := filepath.WalkDir(filepath.Join(root, mod), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				names[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return names
}

var metricRE = regexp.MustCompile(`\bweir_[a-z0-9_]+\b`)

// TestDashboardMetrics checks that every metric a query names is in the
// README's metric contract and defined in the code; a _bucket only of a
// histogram.
func TestDashboardMetrics(t *testing.T) {
	d, qs := loadDashboard(t)
	if len(qs) < 40 {
		t.Fatalf("%d queries in the dashboard, want at least 40", len(qs))
	}
	readme, code := contract(t), codeNames(t)
	used := map[string]bool{}
	for _, q := range qs {
		names := metricRE.FindAllString(q.expr, -1)
		if len(names) == 0 {
			t.Errorf("%s %s: no weir metric in %q", q.panel, q.ref, q.expr)
		}
		for _, n := range names {
			base, suffix := n, ""
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, s); ok && readme[b] {
					base, suffix = b, s
				}
			}
			hist, ok := readme[base]
			switch {
			case !ok:
				t.Errorf("%s %s: %s is not in the README's metric tables", q.panel, q.ref, n)
			case suffix != "" && !hist:
				t.Errorf("%s %s: %s, but %s is no histogram in the README", q.panel, q.ref, n, base)
			case suffix == "" && hist:
				t.Errorf("%s %s: the histogram %s without _bucket, _sum or _count", q.panel, q.ref, n)
			}
			if !code[base] {
				t.Errorf("%s %s: %s is defined nowhere in the code (no \"%s\" literal)", q.panel, q.ref, n, base)
			}
			used[base] = true
		}
	}
	// The panels the dashboard promises.
	for _, m := range []string{"weir_tcp_bytes_total", "weir_tcp_retransmits_total", "weir_tcp_resets_total",
		"weir_tcp_rtt_seconds", "weir_dns_responses_total", "weir_dns_duration_seconds",
		"weir_reducer_collectors_connected", "weir_reducer_collector_loss_total", "weir_reducer_edges",
		"weir_reducer_socket_updates_total", "weir_reducer_events_lost_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	types := map[string]int{}
	ids := map[float64]bool{}
	var panels func([]any)
	panels = func(ps []any) {
		for _, p := range ps {
			pm := p.(map[string]any)
			types[pm["type"].(string)]++
			id := pm["id"].(float64)
			if ids[id] {
				t.Errorf("panel id %v twice", id)
			}
			ids[id] = true
			refs := map[string]bool{}
			for _, tg := range asSlice(pm["targets"]) {
				r := tg.(map[string]any)["refId"].(string)
				if refs[r] {
					t.Errorf("panel %q: refId %s twice", pm["title"], r)
				}
				refs[r] = true
			}
			panels(asSlice(pm["panels"]))
		}
	}
	panels(asSlice(d["panels"]))
	for _, typ := range []string{"nodeGraph", "heatmap", "timeseries", "table", "stat"} {
		if types[typ] == 0 {
			t.Errorf("no %s panel", typ)
		}
	}
	if d["uid"] != "weir-overview" {
		t.Errorf("uid %v", d["uid"])
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// prometheusVersion is the Prometheus built into ~/.cache/weir/bin once (as
// the fleet's sharding test does).
const prometheusVersion = "v0.316.0"

func prometheusBin(t *testing.T) string {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(home, ".cache", "weir", "bin")
	bin := filepath.Join(dir, "prometheus")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("building Prometheus %s into %s (about two minutes, once)", prometheusVersion, dir)
	cmd := exec.Command("go", "install", "-tags", "remove_all_sd",
		"-ldflags", "-X github.com/prometheus/common/version.Version=3.16.0",
		"github.com/prometheus/prometheus/cmd/prometheus@"+prometheusVersion)
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build Prometheus: %v\n%s", err, out)
	}
	return bin
}

// startPrometheus scrapes the reducer and the collector every second.
func startPrometheus(t *testing.T, reducer, collector string) string {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: weir-reducer
    static_configs:
      - targets: [%q]
  - job_name: weir-collector
    static_configs:
      - targets: [%q]
`, reducer, collector)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	harness.Start(t, "prometheus", prometheusBin(t), "--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	harness.WaitHTTP(t, "http://"+addr+"/-/ready", 60*time.Second)
	return "http://" + addr
}

type result struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// promQuery runs an instant query; an invalid query is an error.
func promQuery(ctx context.Context, base, q string) ([]result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		Error     string `json:"error"`
		ErrorType string `json:"errorType"`
		Data      struct {
			ResultType string   `json:"resultType"`
			Result     []result `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s: %s", body.ErrorType, body.Error)
	}
	return body.Data.Result, nil
}

// grafana replaces the dashboard's variables as Grafana would with "All"
// namespaces and a 1 s scrape interval.
func grafana(expr string) string {
	return strings.NewReplacer("$__rate_interval", "20s", "$src_namespace", ".*", "$dst_namespace", ".*").Replace(expr)
}

// TestPrivilegedDashboardQueries runs every query of the dashboard in a real
// Prometheus scraping a real reducer and collector while flowcli talks to
// flowsrv across two network namespaces.
func TestPrivilegedDashboardQueries(t *testing.T) {
	harness.RequireRoot(t)
	_, qs := loadDashboard(t)
	a, b := harness.BridgedHosts(t, "dash")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second})
	reducerTarget := strings.TrimSuffix(strings.TrimPrefix(w.MetricsURL, "http://"), "/metrics")
	collectorTarget := strings.TrimSuffix(strings.TrimPrefix(w.CollectorMetricsURL, "http://"), "/metrics")
	prom := startPrometheus(t, reducerTarget, collectorTarget)

	// Traffic for the flow panels: held connections with rounds every
	// 200 ms, so that rates and RTT observations keep coming.
	bin := harness.Binaries(t)
	listen := net.JoinHostPort(b.IPv4, "8095")
	srv := harness.Start(t, "flowsrv", b.Exec(filepath.Join(bin, "flowsrv"), "-listen", listen, "-conns", "4",
		"-request-bytes", "20000", "-response-bytes", "3000", "-rounds", "300")...)
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "flowcli", a.Exec(filepath.Join(bin, "flowcli"), "-connect", listen, "-conns", "4",
		"-request-bytes", "20000", "-response-bytes", "3000", "-rounds", "300", "-pace", "200ms")...)
	defer cli.Stop(5 * time.Second)
	defer srv.Stop(5 * time.Second)

	ctx := t.Context()
	// Wait until the flow's bytes, and the collector's own counters, have a
	// rate in Prometheus (two scrapes of each target).
	deadline := time.Now().Add(40 * time.Second)
	for _, q := range []string{
		`rate(weir_tcp_bytes_total{src_workload="flowcli",dst_workload="flowsrv"}[20s]) > 0`,
		`rate(weir_collector_sent_bytes_total[20s]) > 0`,
	} {
		for {
			r, err := promQuery(ctx, prom, q)
			if err == nil && len(r) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no result for %s in Prometheus after 40 s (err %v)", q, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// Queries that this traffic must fill: the panel title and refId → a
	// series the query must return.
	mustShow := map[string]func(result) bool{
		"Top talkers (TCP bytes/s)|A": func(r result) bool {
			return r.Metric["src_workload"] == "flowcli" && r.Metric["dst_workload"] == "flowsrv" && positive(r)
		},
		"Top edges|A": func(r result) bool { return r.Metric["src_workload"] == "flowcli" },
		"Service map (bytes/s between workloads)|A": func(r result) bool {
			return r.Metric["src_workload"] == "flowcli" && r.Metric["dst_workload"] == "flowsrv"
		},
		"Connections opened/s and open connections|B": func(r result) bool { return value(r) >= 4 }, // held connections
		"RTT quantiles|A":             func(r result) bool { return positive(r) },
		"RTT heatmap|A":               func(r result) bool { return r.Metric["le"] != "" },
		"Collectors connected|A":      func(r result) bool { return value(r) == 1 },
		"Collectors not connected|A":  func(r result) bool { return value(r) == 0 },
		"Tracked sockets|A":           func(r result) bool { return positive(r) },
		"Collector stream bytes/s|A":  func(r result) bool { return positive(r) },
		"Series and tables|A":         func(r result) bool { return positive(r) },
		"Ingest|A":                    func(r result) bool { return positive(r) },
		"Ingest bytes/s|A":            func(r result) bool { return positive(r) },
		"Loss reported (last hour)|A": func(r result) bool { return true },
		"Events lost/s|A":             func(r result) bool { return value(r) == 0 },
		"variable src_namespace|A":    func(result) bool { return true },
	}
	shown := map[string]bool{}
	for _, q := range qs {
		expr := grafana(q.expr)
		if strings.HasPrefix(q.panel, "variable ") {
			// label_values() is Grafana's: Prometheus gets the series.
			m := regexp.MustCompile(`^label_values\((.+), *[a-z_]+\)$`).FindStringSubmatch(expr)
			if m == nil {
				t.Errorf("%s: %q is not label_values(metric, label)", q.panel, expr)
				continue
			}
			expr = m[1]
		}
		r, err := promQuery(ctx, prom, expr)
		if err != nil {
			t.Errorf("%s %s: %s: %v", q.panel, q.ref, expr, err)
			continue
		}
		key := q.panel + "|" + q.ref
		if check, ok := mustShow[key]; ok {
			for _, s := range r {
				if check(s) {
					shown[key] = true
				}
			}
		}
	}
	for key := range mustShow {
		if !shown[key] {
			panel, ref, _ := strings.Cut(key, "|")
			t.Errorf("panel %q, query %s, shows nothing of the traffic", panel, ref)
		}
	}
	if t.Failed() {
		up, err := promQuery(ctx, prom, "up")
		t.Logf("up: %v %v", up, err)
	}
	t.Logf("%d queries ran in Prometheus, %d of them checked for data", len(qs), len(shown))
}

func value(r result) float64 {
	s, _ := r.Value[1].(string)
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

func positive(r result) bool { return value(r) > 0 }
