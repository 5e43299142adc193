package security

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// servedSerial is the serial number of the certificate the reducer presents
// to a new connection.
func servedSerial(t *testing.T, addr string, tc *tls.Config) string {
	t.Helper()
	tc = tc.Clone()
	tc.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func fileSerial(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// TestPrivilegedRotation renews every certificate (weirctl certs again,
// same CA, files replaced by rename as a Secret update does) while traffic
// flows: the collector's session is not dropped and its bytes stay exact,
// new connections get the reducer's new certificate, and the collector's
// next connection presents its new one.
func TestPrivilegedRotation(t *testing.T) {
	harness.RequireRoot(t)
	dir := certsDir(t, "--nodes", "sec-node", "--server-names", "localhost,127.0.0.1")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second,
		ReducerArgs:   tlsFlags(dir, "reducer"),
		CollectorArgs: append([]string{"--node-name", "sec-node"}, tlsFlags(dir, "node-sec-node")...)})
	harness.WaitFor(t, w.CollectorMetricsURL, 15*time.Second, "the collector's session", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1 && m.Sum("weir_collector_acks_received_total", nil) >= 3
	})
	reconnects := metricSum(t, w.CollectorMetricsURL, "weir_collector_stream_reconnects_total")
	observer := clientTLS(t, dir, "observer-weirctl")
	oldServed := servedSerial(t, w.GRPCAddr, observer)
	if oldServed != fileSerial(t, filepath.Join(dir, "reducer.pem")) {
		t.Fatal("the reducer does not serve reducer.pem")
	}
	oldNode := fileSerial(t, filepath.Join(dir, "node-sec-node.pem"))

	// Rotate while connections carry traffic.
	rotate := exec.Command(filepath.Join(harness.Binaries(t), "weirctl"), "certs", "--dir", dir, "--nodes", "sec-node", "--server-names", "localhost,127.0.0.1")
	if err := rotate.Start(); err != nil {
		t.Fatal(err)
	}
	const conns, request, response = 4, 300_007, 20_011
	transfer(t, conns, request, response)
	if err := rotate.Wait(); err != nil {
		t.Fatalf("weirctl certs: %v", err)
	}
	newNode := fileSerial(t, filepath.Join(dir, "node-sec-node.pem"))
	if newNode == oldNode {
		t.Fatal("weirctl certs did not renew the node certificate")
	}
	transfer(t, conns, request, response)
	waitEdge(t, w.MetricsURL, 2*conns*request, 2*conns*response, 2*conns)

	// New connections get the new server certificate (checked at most once
	// a second).
	want := fileSerial(t, filepath.Join(dir, "reducer.pem"))
	deadline := time.Now().Add(5 * time.Second)
	for servedSerial(t, w.GRPCAddr, clientTLS(t, dir, "observer-weirctl")) != want {
		if time.Now().After(deadline) {
			t.Fatal("the reducer still serves its old certificate")
		}
		time.Sleep(200 * time.Millisecond)
	}
	red, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if v := red.Sum("weir_reducer_tls_reloads_total", map[string]string{"result": "ok"}); v < 1 {
		t.Errorf("reducer reloads: %v", v)
	}
	if v := red.Sum("weir_reducer_sessions_replaced_total", nil); v != 0 {
		t.Errorf("sessions replaced: %v", v)
	}
	if v := metricSum(t, w.CollectorMetricsURL, "weir_collector_stream_reconnects_total"); v != reconnects {
		t.Errorf("the collector's session was dropped: %v reconnects", v-reconnects)
	}
	// The old certificate of the server was not served anymore, and the
	// collector's session still acks.
	before := acks(t, w.CollectorMetricsURL)
	harness.WaitFor(t, w.CollectorMetricsURL, 10*time.Second, "acks after the rotation", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_acks_received_total", nil) >= before+2
	})

	// The collector's next connection presents its renewed certificate: a
	// restarted reducer makes it reconnect, and it reloads.
	w.RestartReducer(t)
	harness.WaitFor(t, w.CollectorMetricsURL, 20*time.Second, "the collector's new session with its renewed certificate", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1 && m.Sum("weir_collector_tls_reloads_total", map[string]string{"result": "ok"}) == 1 &&
			m.Sum("weir_collector_tls_reloads_total", map[string]string{"result": "error"}) == 0
	})
}
