package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedMutualTLS runs the reducer and the collector with mTLS: the
// collector's flows reach /metrics, and a collector without a client
// certificate, or with plaintext, never gets a session.
func TestPrivilegedMutualTLS(t *testing.T) {
	harness.RequireRoot(t)
	c := harness.NewCerts(t)
	w := harness.StartWeir(t, harness.WeirOptions{
		Interval:      time.Second,
		ReducerArgs:   []string{"--tls-cert", c.ServerCert, "--tls-key", c.ServerKey, "--tls-ca", c.CA},
		CollectorArgs: []string{"--tls-cert", c.ClientCert, "--tls-key", c.ClientKey, "--tls-ca", c.CA},
	})
	harness.WaitFor(t, w.CollectorMetricsURL, 15*time.Second, "the mTLS session", func(m harness.Metrics) bool {
		v, ok := m.Value("weir_collector_connected", nil)
		return ok && v == 1
	})
	const conns, request, response = 2, 30_001, 4_001
	loopbackTransfer(t, conns, request, response)
	harness.WaitFor(t, w.MetricsURL, 15*time.Second, "the loopback edge over mTLS", func(m harness.Metrics) bool {
		e := readEdge(m)
		return e.up == conns*request && e.down == conns*response && e.opened == conns
	})

	// A collector that speaks plaintext to the mTLS reducer is refused.
	port := harness.FreePort(t)
	plain := harness.StartCollector(t, w.GRPCAddr, port, time.Second, "--node-name", "plaintext-node")
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	harness.WaitFor(t, url, 15*time.Second, "the plaintext collector to fail twice", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_stream_reconnects_total", nil) >= 2
	})
	m, err := harness.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Value("weir_collector_connected", nil); v != 0 {
		t.Errorf("plaintext collector connected = %v, want 0", v)
	}
	if got := m.Sum("weir_collector_batches_sent_total", nil); got != 0 {
		t.Errorf("plaintext collector sent %v batches, want 0", got)
	}
	if !plain.Alive() || !w.Reducer.Alive() {
		t.Fatal("a process exited")
	}
	red, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := red.Value("weir_reducer_collectors_connected", nil); v != 1 {
		t.Errorf("reducer sessions = %v, want only the mTLS collector's", v)
	}
}
