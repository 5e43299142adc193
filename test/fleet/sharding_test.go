package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// prometheusVersion is the Prometheus that the sharding test builds from
// the Go module proxy into ~/.cache/weir/bin once (see RECIPES.md).
const prometheusVersion = "v0.316.0"

// prometheusBin returns the cached Prometheus, building it when missing.
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

// startPrometheus scrapes targets (host:port of /metrics) every second.
func startPrometheus(t *testing.T, targets []string) string {
	t.Helper()
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: weir-reducer
    fallback_scrape_protocol: PrometheusText0.0.4
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	harness.Start(t, "prometheus", prometheusBin(t), "--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	harness.WaitHTTP(t, "http://"+addr+"/-/ready", 60*time.Second)
	return "http://" + addr
}

// promSum queries Prometheus for sum by (src_workload, dst_workload) of
// metric.
func promSum(base, metric string) (map[Edge]uint64, error) {
	q := fmt.Sprintf("sum by (src_workload, dst_workload) (%s)", metric)
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("query %s: status %s", q, body.Status)
	}
	out := make(map[Edge]uint64)
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, err
		}
		out[Edge{r.Metric["src_workload"], r.Metric["dst_workload"]}] = uint64(v)
	}
	return out, nil
}

// TestShardingPrometheus: the same simulated fleet (pods named by
// deployment through a watcher's metadata) goes through one reducer and
// through three --sharded reducers, each collector to the one that the
// rendezvous hash of its node name picks; a real Prometheus scrapes the
// three, and sum by edge equals the single reducer's figures exactly.
func TestShardingPrometheus(t *testing.T) {
	promURL := ""
	args := []string{"--max-series", "100000"}
	single := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: args})
	var shards []string
	var shardURLs, targets []string
	for range 3 {
		w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: append([]string{"--sharded"}, args...)})
		shards = append(shards, w.GRPCAddr)
		shardURLs = append(shardURLs, w.MetricsURL)
		targets = append(targets, strings.TrimSuffix(strings.TrimPrefix(w.MetricsURL, "http://"), "/metrics"))
	}
	promURL = startPrometheus(t, targets)

	cfg := Config{
		Collectors: 30, Sockets: 6000, Interval: 200 * time.Millisecond, Intervals: 20,
		MaxSkew: 5, Change: 0.10, Reopen: 0.01, Short: 60, Reconnects: 2, Pods: true, Seed: 3,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type out struct {
		res *Result
		err error
	}
	one, three := make(chan out, 1), make(chan out, 1)
	go func() {
		c := cfg
		c.Reducers = []string{single.GRPCAddr}
		r, err := Run(ctx, c)
		one <- out{r, err}
	}()
	go func() {
		c := cfg
		c.Reducers = shards
		r, err := Run(ctx, c)
		three <- out{r, err}
	}()
	o1, o3 := <-one, <-three
	if o1.err != nil || o3.err != nil {
		t.Fatalf("single: %v; sharded: %v", o1.err, o3.err)
	}
	if d := diff(o1.res.Edges, o3.res.Edges); len(d) > 0 {
		t.Fatalf("the two runs sent different traffic: %v", d)
	}
	per := make([]int, len(shards))
	for i := range cfg.Collectors {
		for j, a := range shards {
			if Pick(fmt.Sprintf("fleet-%04d", i), shards) == a {
				per[j]++
			}
		}
	}
	t.Logf("collectors per reducer: %v; %d edges", per, len(o1.res.Edges))
	if d := waitExact(t, []string{single.MetricsURL}, o1.res.Edges, 30*time.Second); len(d) > 0 {
		t.Fatalf("single reducer: %v", d)
	}
	reportDiff(t, waitExact(t, shardURLs, o3.res.Edges, 30*time.Second))

	// Prometheus's sums against the single reducer's own figures.
	m, err := harness.Scrape(single.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	want := metricsEdges(m)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var bad []string
		for _, metric := range []struct {
			name  string
			field func(*Want) uint64
		}{
			{"weir_tcp_bytes_total", func(w *Want) uint64 { return w.Bytes }},
			{"weir_tcp_packets_total", func(w *Want) uint64 { return w.Packets }},
			{"weir_tcp_connections_opened_total", func(w *Want) uint64 { return w.Opened }},
			{"weir_tcp_active_connections", func(w *Want) uint64 { return w.Active }},
		} {
			got, err := promSum(promURL, metric.name)
			if err != nil {
				t.Fatal(err)
			}
			for e, w := range want {
				if g, v := got[e], metric.field(w); g != v {
					bad = append(bad, fmt.Sprintf("%s{%s -> %s}: Prometheus sum %d, single reducer %d", metric.name, e.Src, e.Dst, g, v))
				}
			}
			for e, g := range got {
				if _, ok := want[e]; !ok && g != 0 {
					bad = append(bad, fmt.Sprintf("%s{%s -> %s}: Prometheus sum %d, not on the single reducer", metric.name, e.Src, e.Dst, g))
				}
			}
		}
		if len(bad) == 0 {
			t.Logf("sum by (src_workload, dst_workload) over 3 reducers equals the single reducer on %d edges, 4 metrics", len(want))
			return
		}
		if time.Now().After(deadline) {
			reportDiff(t, bad)
			return
		}
		time.Sleep(time.Second)
	}
}
