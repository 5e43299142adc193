package telemetry2

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedNAT stands a DNAT rule in the server's namespace in for a
// ClusterIP: the client connects to a virtual IP, which conntrack rewrites
// to the server's address and port. The collector sends the client's socket
// with its translation, so the reducer joins it to the server's socket: the
// edge goes from the client process to the server process, with exact
// bytes, and nothing goes to the virtual IP.
func TestPrivilegedNAT(t *testing.T) {
	harness.RequireRoot(t)
	client, server := harness.TwoHosts(t, "t2nat")
	run(t, "ip", "-n", client.NS, "route", "add", apiVIP+"/32", "via", server.IPv4)
	nft(t, server.NS, `table ip weirt2 {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr `+apiVIP+` tcp dport 80 dnat to `+server.IPv4+`:8080
	}
}`)
	w := harness.StartWeir(t, harness.WeirOptions{})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv := harness.Start(t, "nat-server", server.Exec(self, "weir-helper", "dnsserver", server.IPv4+":53", server.IPv4+":8080")...)
	srv.WaitLine(t, "ready", 30*time.Second)
	// The collector lists the network namespaces every 2 s: the new ones
	// are followed before the connection is made, so that its socket is
	// announced with its translation.
	time.Sleep(5 * time.Second)

	const n = 54321
	cli := harness.Start(t, "nat-client", client.Exec(self, "weir-helper", "tcp", apiVIP+":80", strconv.Itoa(n))...)
	cli.WaitLine(t, "ready", 30*time.Second)
	cli.Send(t, "go")
	cli.WaitLine(t, "sent", 30*time.Second)

	comm := commOf(t, self)
	m := harness.WaitFor(t, w.MetricsURL, 60*time.Second, "the client joined to the backend through NAT", func(m harness.Metrics) bool {
		return m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": comm, "src_kind": "process", "dst_workload": comm, "dst_kind": "process"}) == n
	})
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": apiVIP}); got != 0 {
		t.Errorf("%v bytes to the virtual IP, want 0 (joined to the backend)", got)
	}
	c := harness.WaitFor(t, w.CollectorMetricsURL, 10*time.Second, "the collector's translated socket", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_nat_sockets_translated_total", nil) >= 1
	})
	if got := c.Sum("weir_collector_conntrack_overruns_total", nil); got != 0 {
		t.Logf("conntrack overruns: %v (other namespaces' churn)", got)
	}
}
