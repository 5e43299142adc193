package consumers

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// The edge labels of the test's traffic on /metrics, and the same as OTLP
// attributes.
var (
	promUp   = map[string]string{"src_workload": cliName, "src_kind": "process", "dst_workload": srvName, "dst_kind": "process"}
	promDown = map[string]string{"src_workload": srvName, "src_kind": "process", "dst_workload": cliName, "dst_kind": "process"}
	otlpUp   = map[string]string{"source.workload.name": cliName, "source.workload.kind": "process", "dest.workload.name": srvName, "dest.workload.kind": "process"}
	otlpDown = map[string]string{"source.workload.name": srvName, "source.workload.kind": "process", "dest.workload.name": cliName, "dest.workload.kind": "process"}
)

// traffic runs conns connections of request bytes up and response bytes
// down from host a to host b, and returns once they are closed.
func traffic(t *testing.T, a, b harness.Host, port, conns, request, response int) {
	t.Helper()
	cli, srv := peers(t)
	listen := net.JoinHostPort(b.IPv4, strconv.Itoa(port))
	s := harness.Start(t, srvName, b.Exec(srv, "-listen", listen, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	s.WaitLine(t, "listening", 10*time.Second)
	c := harness.Start(t, cliName, a.Exec(cli, "-connect", listen, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	if err := c.Wait(20 * time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", cliName, err, c.Stderr())
	}
	if err := s.Wait(10 * time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", srvName, err, s.Stderr())
	}
}

// matches reports whether attrs hold every pair of want.
func matches(attrs, want map[string]string) bool {
	for k, v := range want {
		if attrs[k] != v {
			return false
		}
	}
	return true
}

// received sums up what the collector received for one edge: the latest
// cumulative point, or the sum of the delta points, of each metric.
type received struct {
	values      map[string]int64
	units       map[string]string
	kinds       map[string]string
	temporality map[string]int
	monotonic   map[string]bool
	attrs       map[string]string
	resource    map[string]string
	exports     int
	badStarts   int // delta points whose start is not the previous point's time
}

func receivedFor(exports []export, want map[string]string) received {
	r := received{values: map[string]int64{}, units: map[string]string{}, kinds: map[string]string{},
		temporality: map[string]int{}, monotonic: map[string]bool{}}
	lastTime := map[string]int64{}
	for _, e := range exports {
		seen := false
		for _, p := range e.points {
			if !matches(p.attrs, want) {
				continue
			}
			seen = true
			r.units[p.metric], r.kinds[p.metric], r.temporality[p.metric], r.monotonic[p.metric] = p.unit, p.kind, p.temporality, p.monotonic
			r.attrs, r.resource = p.attrs, e.resource
			if p.temporality == 1 {
				if lt, ok := lastTime[p.metric]; ok && p.start != lt {
					r.badStarts++
				}
				lastTime[p.metric] = p.time
				r.values[p.metric] += p.value
			} else {
				r.values[p.metric] = p.value
			}
		}
		if seen {
			r.exports++
		}
	}
	return r
}

// TestPrivilegedOTLP pushes the flow metrics of real traffic between two
// namespaces to a real OpenTelemetry Collector, in both temporalities, and
// checks names, units, attributes and values against /metrics. The
// collector is stopped for a while: ingest goes on, the failed pushes are
// counted, and delivery resumes (with delta, nothing is lost: the next
// delivered point carries the increments).
func TestPrivilegedOTLP(t *testing.T) {
	harness.RequireRoot(t)
	a, b := harness.BridgedHosts(t, "cons")
	const (
		conns    = 3
		request  = 1_000_003
		response = 250_001
	)
	for _, tc := range []struct {
		temporality string
		code        int
	}{{"cumulative", 2}, {"delta", 1}} {
		t.Run(tc.temporality, func(t *testing.T) {
			oc := startOtelcol(t)
			w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second, ReducerArgs: []string{
				"--otlp-endpoint", oc.addr, "--otlp-insecure", "--otlp-interval", "500ms", "--otlp-timeout", "2s",
				"--otlp-temporality", tc.temporality, "--otlp-header", "x-weir-test=" + tc.temporality,
			}})
			traffic(t, a, b, 8081, conns, request, response)
			// The closed connections' bytes are exact on /metrics.
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, "the edge with every byte and no active connection", func(m harness.Metrics) bool {
				up, _ := m.Value("weir_tcp_bytes_total", promUp)
				down, _ := m.Value("weir_tcp_bytes_total", promDown)
				active, _ := m.Value("weir_tcp_active_connections", promUp)
				return up == conns*request && down == conns*response && active == 0
			})
			check := func(stage string, wantUp, wantDown int64) {
				t.Helper()
				m, err := harness.Scrape(w.MetricsURL)
				if err != nil {
					t.Fatal(err)
				}
				promVal := func(name string, labels map[string]string) int64 {
					v, _ := m.Value(name, labels)
					return int64(v)
				}
				deadline := time.Now().Add(10 * time.Second)
				var up, down received
				for {
					exports := readExports(t, oc.files()...)
					up, down = receivedFor(exports, otlpUp), receivedFor(exports, otlpDown)
					if up.values["tcp.bytes"] == wantUp && down.values["tcp.bytes"] == wantDown && up.values["tcp.active"] == 0 || time.Now().After(deadline) {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				t.Logf("%s: %d exports of the edge received; tcp.bytes up %d down %d; /metrics %d %d",
					stage, up.exports, up.values["tcp.bytes"], down.values["tcp.bytes"], promVal("weir_tcp_bytes_total", promUp), promVal("weir_tcp_bytes_total", promDown))
				if got, want := up.values["tcp.bytes"], promVal("weir_tcp_bytes_total", promUp); got != want || got != wantUp {
					t.Errorf("%s: tcp.bytes %s→%s = %d, /metrics %d, sent %d", stage, cliName, srvName, got, want, wantUp)
				}
				if got, want := down.values["tcp.bytes"], promVal("weir_tcp_bytes_total", promDown); got != want || got != wantDown {
					t.Errorf("%s: tcp.bytes %s→%s = %d, /metrics %d, sent %d", stage, srvName, cliName, got, want, wantDown)
				}
				for _, mt := range []struct {
					otlp, prom string
				}{{"tcp.packets", "weir_tcp_packets_total"}, {"tcp.new_sockets", "weir_tcp_connections_opened_total"}, {"tcp.active", "weir_tcp_active_connections"}} {
					if got, want := up.values[mt.otlp], promVal(mt.prom, promUp); got != want {
						t.Errorf("%s: %s = %d, /metrics %s = %d", stage, mt.otlp, got, mt.prom, want)
					}
				}
				wantUnits := map[string]string{"tcp.bytes": "By", "tcp.packets": "{segment}", "tcp.new_sockets": "{connection}", "tcp.active": "{connection}"}
				for name, unit := range wantUnits {
					if up.units[name] != unit {
						t.Errorf("unit of %s = %q, want %q", name, up.units[name], unit)
					}
				}
				for _, name := range []string{"tcp.bytes", "tcp.packets", "tcp.new_sockets"} {
					if up.kinds[name] != "sum" || up.temporality[name] != tc.code || !up.monotonic[name] {
						t.Errorf("%s: %s, temporality %d, monotonic %v; want a monotonic sum with temporality %d",
							name, up.kinds[name], up.temporality[name], up.monotonic[name], tc.code)
					}
				}
				if up.kinds["tcp.active"] != "gauge" {
					t.Errorf("tcp.active is a %s, want a gauge", up.kinds["tcp.active"])
				}
				if up.resource["service.name"] != "weir-reducer" {
					t.Errorf("resource %v", up.resource)
				}
				if up.badStarts > 0 {
					t.Errorf("%d delta points do not start where the previous one ended", up.badStarts)
				}
			}
			check("after the traffic", conns*request, conns*response)
			// The endpoint writes an export before the reducer has its
			// answer and counts it: wait for the count, not one scrape.
			harness.WaitFor(t, w.MetricsURL, 5*time.Second, "weir_reducer_otlp_exports_total of at least 2", func(m harness.Metrics) bool {
				return m.Sum("weir_reducer_otlp_exports_total", nil) >= 2
			})

			// The collector goes away. Ingest goes on, the pushes fail and
			// are counted; then it comes back and delivery resumes.
			oc.stop()
			traffic(t, a, b, 8082, conns, request, response)
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, "ingest going on with the OTLP endpoint down", func(m harness.Metrics) bool {
				up, _ := m.Value("weir_tcp_bytes_total", promUp)
				failed := m.Sum("weir_reducer_otlp_export_failures_total", nil)
				dropped := m.Sum("weir_reducer_otlp_dropped_batches_total", nil)
				points := m.Sum("weir_reducer_otlp_dropped_points_total", nil)
				return up == 2*conns*request && failed >= 1 && dropped >= 1 && points >= 4
			})
			oc.start()
			check("after the collector came back", 2*conns*request, 2*conns*response)
			if !w.Reducer.Alive() {
				t.Fatal("the reducer exited")
			}
		})
	}
}
