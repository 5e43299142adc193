package telemetry2

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedNAT stands DNAT rules in the server's namespace in for a
// ClusterIP, over IPv4 and IPv6: the client connects to a virtual IP, which
// conntrack rewrites to the server's address and port. The collector sends
// the client's socket with its translation, so the reducer joins it to the
// server's socket: the edge goes from the client process to the server
// process, with exact bytes, and nothing goes to the virtual IPs.
func TestPrivilegedNAT(t *testing.T) {
	harness.RequireRoot(t)
	// The namespaces appear after the collector started, and the client
	// connects at once: the collector lists the namespaces again before
	// a report, and a new one's connections come from the dump that
	// follows its conntrack socket's opening.
	w := harness.StartWeir(t, harness.WeirOptions{})
	client, server := harness.TwoHosts(t, "t2nat")
	dnat(t, client, server)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv := harness.Start(t, "nat-server", server.Exec(self, "weir-helper", "dnsserver",
		"tcp="+server.IPv4+":8080", "tcp=["+server.IPv6+"]:8080")...)
	srv.WaitLine(t, "ready", 30*time.Second)

	total := 0
	for _, c := range []struct {
		vip   string
		bytes int
	}{{apiVIP, 54321}, {apiVIP6, 43210}} {
		cli := harness.Start(t, "nat-client-"+c.vip, client.Exec(self, "weir-helper", "tcp", net.JoinHostPort(c.vip, "80"), strconv.Itoa(c.bytes))...)
		cli.WaitLine(t, "ready", 30*time.Second)
		cli.Send(t, "go")
		cli.WaitLine(t, "sent", 30*time.Second)
		total += c.bytes
	}

	comm := commOf(t, self)
	m := harness.WaitFor(t, w.MetricsURL, 60*time.Second, "the clients joined to the backend through NAT", func(m harness.Metrics) bool {
		return m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": comm, "src_kind": "process", "dst_workload": comm, "dst_kind": "process"}) == float64(total)
	})
	for _, vip := range []string{apiVIP, apiVIP6} {
		if got := m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": vip}); got != 0 {
			t.Errorf("%v bytes to the virtual IP %s, want 0 (joined to the backend)", got, vip)
		}
	}
	harness.WaitFor(t, w.CollectorMetricsURL, 10*time.Second, "the collector's translated sockets", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_nat_sockets_translated_total", nil) >= 2
	})
}
