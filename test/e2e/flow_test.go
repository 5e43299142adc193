package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// Edge labels of the two test executables (copies of flowcli and flowsrv
// named after the test process; see peerBin). Their comm is the
// executable's name, as ps -o comm shows it.
var (
	clientToServer = edgeLabels(cliName, srvName)
	serverToClient = edgeLabels(srvName, cliName)
)

// edge is what the reducer shows for the client/server pair.
type edge struct {
	up, down, opened, active, upSegs float64
}

func readEdge(m harness.Metrics) edge {
	var e edge
	e.up, _ = m.Value("weir_tcp_bytes_total", clientToServer)
	e.down, _ = m.Value("weir_tcp_bytes_total", serverToClient)
	e.opened, _ = m.Value("weir_tcp_connections_opened_total", clientToServer)
	e.active, _ = m.Value("weir_tcp_active_connections", clientToServer)
	e.upSegs, _ = m.Value("weir_tcp_packets_total", clientToServer)
	return e
}

// TestPrivilegedEndToEnd moves known byte counts between a client executable
// in one network namespace and a server executable in another, and checks
// the edge on the reducer's /metrics. The byte counts must be exact: the
// collector reads the kernel's own tcp_sock counters, takes out the SYN and
// FIN sequence numbers, and the reducer counts each byte once although both
// ends report it.
func TestPrivilegedEndToEnd(t *testing.T) {
	harness.RequireRoot(t)
	a, b := harness.TwoHosts(t, "e2e")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second})

	const (
		conns    = 5
		request  = 1_000_003
		response = 250_001
	)
	for _, tc := range []struct {
		name           string
		server, client string
	}{
		{"ipv4", b.IPv4, a.IPv4},
		{"ipv6", b.IPv6, a.IPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := harness.Scrape(w.MetricsURL)
			if err != nil {
				t.Fatal(err)
			}
			base := readEdge(before)
			if base.active != 0 {
				t.Fatalf("active connections before the transfer = %v, want 0", base.active)
			}

			listen := net.JoinHostPort(tc.server, "8080")
			srv := harness.Start(t, "flowsrv", b.Exec(peerBin(t, "flowsrv"),
				"-listen", listen, "-conns", strconv.Itoa(conns),
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			srv.WaitLine(t, "listening", 10*time.Second)

			start := time.Now()
			cli := harness.Start(t, "flowcli", a.Exec(peerBin(t, "flowcli"),
				"-connect", listen, "-conns", strconv.Itoa(conns), "-hold",
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			cli.WaitLine(t, "done", 20*time.Second)

			// While the connections are held open: the edge is there with every
			// byte, k opened and k active connections.
			m := harness.WaitFor(t, w.MetricsURL, 15*time.Second, "the held connections on the edge", func(m harness.Metrics) bool {
				e := readEdge(m)
				return e.active == conns && e.up-base.up == conns*request && e.down-base.down == conns*response
			})
			t.Logf("first byte to complete edge on /metrics: %s (collector interval 1s)", time.Since(start).Round(10*time.Millisecond))
			e := readEdge(m)
			if got := e.opened - base.opened; got != conns {
				t.Errorf("connections opened = %v, want %d", got, conns)
			}
			if e.upSegs <= base.upSegs {
				t.Errorf("packets client→server did not grow: %v → %v", base.upSegs, e.upSegs)
			}

			// The kernel's own view of the same connections, from the client's
			// namespace: ss -ti.
			acked, received := ssCounters(t, a.NS, listen)
			t.Logf("ss -ti on the client: bytes_acked=%d bytes_received=%d over %d connections; weir: %v up, %v down",
				acked, received, conns, e.up-base.up, e.down-base.down)
			// bytes_acked counts the SYN of each active open as one byte.
			if acked-conns != conns*request || received != conns*response {
				t.Errorf("ss -ti disagrees with what was sent: bytes_acked-SYNs=%d (want %d) bytes_received=%d (want %d)",
					acked-conns, conns*request, received, conns*response)
			}

			// Close: active goes back to 0 and the bytes stay exact (the final
			// counters at close must not add anything).
			cli.CloseStdin()
			if err := cli.Wait(10 * time.Second); err != nil {
				t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
			}
			if err := srv.Wait(10 * time.Second); err != nil {
				t.Fatalf("flowsrv: %v\n%s", err, srv.Stderr())
			}
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, "active connections back to 0", func(m harness.Metrics) bool {
				return readEdge(m).active == 0
			})
			time.Sleep(2 * time.Second) // two more reports: nothing may be added after close
			m, err = harness.Scrape(w.MetricsURL)
			if err != nil {
				t.Fatal(err)
			}
			e = readEdge(m)
			if got := e.up - base.up; got != conns*request {
				t.Errorf("bytes flowcli→flowsrv after close = %v, want %d", got, conns*request)
			}
			if got := e.down - base.down; got != conns*response {
				t.Errorf("bytes flowsrv→flowcli after close = %v, want %d", got, conns*response)
			}
			if got := e.opened - base.opened; got != conns {
				t.Errorf("connections opened after close = %v, want %d", got, conns)
			}
		})
	}
}

var ssField = regexp.MustCompile(`\b(bytes_acked|bytes_received):(\d+)`)

// ssCounters sums bytes_acked and bytes_received over the established
// connections to dst, as ss -ti in namespace ns reports them.
func ssCounters(t *testing.T, ns, dst string) (acked, received int) {
	t.Helper()
	host, port, _ := net.SplitHostPort(dst)
	filter := fmt.Sprintf("dst %s dport = :%s", hostForSS(host), port)
	out, err := exec.Command("ip", "netns", "exec", ns, "ss", "-tinH", "state", "established", filter).CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	for _, f := range ssField.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(f[2])
		if f[1] == "bytes_acked" {
			acked += n
		} else {
			received += n
		}
	}
	return acked, received
}

func hostForSS(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
}
