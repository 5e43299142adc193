package security

import (
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedNodeIdentity runs the reducer with mTLS and certificates
// from weirctl certs, and a real collector for node sec-node. Hijacks of
// sec-node's session (another node's valid certificate, with a huge epoch or
// a current one; plaintext; an observer's or the k8s-watcher's certificate;
// sec-node's own certificate with an epoch far ahead; a second real
// collector holding node other-node's certificate that calls itself
// sec-node) are all refused, each counted, and the real collector is not
// disturbed: no reconnect, no replaced session, its acks keep coming and its
// bytes stay exact.
func TestPrivilegedNodeIdentity(t *testing.T) {
	harness.RequireRoot(t)
	dir := certsDir(t, "--nodes", "sec-node,other-node", "--server-names", "localhost,127.0.0.1")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second,
		ReducerArgs:   tlsFlags(dir, "reducer"),
		CollectorArgs: append([]string{"--node-name", "sec-node"}, tlsFlags(dir, "node-sec-node")...)})
	harness.WaitFor(t, w.CollectorMetricsURL, 15*time.Second, "the real collector's session", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		// Past the switch to zstd, a reconnect of its own after the first welcome.
		return v == 1 && m.Sum("weir_collector_acks_received_total", nil) >= 3
	})
	reconnects := metricSum(t, w.CollectorMetricsURL, "weir_collector_stream_reconnects_total")
	ctx := t.Context()
	now := uint64(time.Now().UnixNano())
	attacks := []struct {
		name  string
		cert  string // "" for plaintext
		node  string
		epoch uint64
		code  codes.Code
	}{
		{"another node's certificate, huge epoch", "node-other-node", "sec-node", math.MaxUint64, codes.PermissionDenied},
		{"another node's certificate, current epoch", "node-other-node", "sec-node", now, codes.PermissionDenied},
		{"observer certificate", "observer-weirctl", "sec-node", math.MaxUint64, codes.PermissionDenied},
		{"k8s-watcher certificate", "k8s-watcher", "sec-node", math.MaxUint64, codes.PermissionDenied},
		{"plaintext, huge epoch", "", "sec-node", math.MaxUint64, codes.Unavailable},
		{"the node's own certificate, huge epoch", "node-sec-node", "sec-node", math.MaxUint64, codes.FailedPrecondition},
		{"the node's own certificate, an hour ahead", "node-sec-node", "sec-node", now + uint64(time.Hour), codes.FailedPrecondition},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			before := acks(t, w.CollectorMetricsURL)
			var cl = ingestClient(t, w.GRPCAddr, nil, nil)
			if a.cert != "" {
				cl = ingestClient(t, w.GRPCAddr, nil, clientTLS(t, dir, a.cert))
			}
			err := session(ctx, cl, hello(a.node, a.epoch), injected())
			if status.Code(err) != a.code {
				t.Fatalf("hijack ended with %v, want %v", err, a.code)
			}
			// The real collector's acks keep arriving.
			harness.WaitFor(t, w.CollectorMetricsURL, 10*time.Second, "two more acks", func(m harness.Metrics) bool {
				return m.Sum("weir_collector_acks_received_total", nil) >= before+2
			})
		})
	}

	// A real collector with node other-node's certificate calling itself
	// sec-node never gets a session.
	port := harness.FreePort(t)
	fake := harness.StartCollector(t, w.GRPCAddr, port, time.Second, append([]string{"--node-name", "sec-node"}, tlsFlags(dir, "node-other-node")...)...)
	fakeURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	harness.WaitFor(t, fakeURL, 15*time.Second, "the impostor collector to be refused twice", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_stream_reconnects_total", nil) >= 2
	})
	m, err := harness.Scrape(fakeURL)
	if err != nil {
		t.Fatal(err)
	}
	if v := m.Sum("weir_collector_acks_received_total", nil); v != 0 {
		t.Errorf("the impostor got %v acks", v)
	}
	if !strings.Contains(fake.Stderr(), "PermissionDenied") {
		t.Errorf("the impostor's log does not say why:\n%s", fake.Stderr())
	}

	// Throughout, the real collector's bytes stay exact.
	const conns, request, response = 3, 40_009, 7_001
	transfer(t, conns, request, response)
	waitEdge(t, w.MetricsURL, conns*request, conns*response, conns)

	col, err := harness.Scrape(w.CollectorMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if v := col.Sum("weir_collector_stream_reconnects_total", nil); v != reconnects {
		t.Errorf("the real collector reconnected %v times during the attacks\n%s", v-reconnects, w.Collector.Stderr())
	}
	red, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, reason string
		min          float64
	}{
		{"weir_reducer_streams_rejected_total", "node_mismatch", 3},
		{"weir_reducer_streams_rejected_total", "epoch_in_future", 2},
		{"weir_reducer_auth_denied_total", "wrong_kind", 2},
		{"weir_reducer_tls_handshake_failures_total", "refused", 1}, // the plaintext hijack
	} {
		if v := red.Sum(c.name, map[string]string{"reason": c.reason}); v < c.min {
			t.Errorf("%s{reason=%q} = %v, want at least %v", c.name, c.reason, v, c.min)
		}
	}
	if v := red.Sum("weir_reducer_sessions_replaced_total", nil); v != 0 {
		t.Errorf("sessions replaced: %v", v)
	}
	if v, _ := red.Value("weir_reducer_collectors_connected", nil); v != 1 {
		t.Errorf("sessions: %v, want the real collector's only", v)
	}

	// weirctl reads the Observer API with an observer certificate only.
	ctl := filepath.Join(harness.Binaries(t), "weirctl")
	if out, err := exec.Command(ctl, append([]string{"status", "--server", w.GRPCAddr}, tlsFlags(dir, "observer-weirctl")...)...).CombinedOutput(); err != nil {
		t.Errorf("weirctl status with the observer certificate: %v\n%s", err, out)
	}
	out, err := exec.Command(ctl, append([]string{"status", "--server", w.GRPCAddr}, tlsFlags(dir, "node-sec-node")...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "weirctl needs an observer certificate") {
		t.Errorf("weirctl status with a node certificate: %v\n%s", err, out)
	}
}

func acks(t *testing.T, url string) float64 {
	t.Helper()
	return metricSum(t, url, "weir_collector_acks_received_total")
}

func metricSum(t *testing.T, url, name string) float64 {
	t.Helper()
	m, err := harness.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return m.Sum(name, nil)
}
