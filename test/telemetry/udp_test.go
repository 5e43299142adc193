package telemetry

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedUDP sends UDP between two network namespaces on a bridge,
// over IPv4 and IPv6, from unconnected sockets bound to any address (the
// remote of each datagram is only known per call), and checks weir's UDP
// metrics exactly: bytes and datagrams both ways, each counted once; the
// drops of a receiver that never reads, equal to its socket's drops in
// /proc/net/udp; and a socket that talks to more remotes than --udp-peers,
// whose excess is folded into other peers and counted as collector loss.
func TestPrivilegedUDP(t *testing.T) {
	harness.RequireRoot(t)
	a, b := harness.BridgedHosts(t, "udp")
	w := harness.StartWeir(t, harness.WeirOptions{CollectorArgs: append([]string{"--udp", "--udp-peers", "4"}, bigRing...)})
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			addr := fam.addr(b)
			t.Run("echo", func(t *testing.T) { retryOnLoss(t, w, func() error { return testUDPEcho(t, w, a, b, addr) }) })
			t.Run("drops", func(t *testing.T) {
				retryOnLoss(t, w, func() error { return testUDPDrops(t, w, a, b, addr, fam.name) })
			})
			t.Run("peer-cap", func(t *testing.T) { retryOnLoss(t, w, func() error { return testUDPPeerCap(t, w, a, addr) }) })
		})
	}
}

// testUDPEcho sends datagrams of one size from a to an echo server in b,
// which sends each back. Both sockets are on this node, the client's bound
// to any address: the reducer joins their two ends, and each direction
// counts once, from its sender, on the one process → process edge, with
// nothing on the addresses.
func testUDPEcho(t *testing.T, w *harness.Weir, a, b harness.Host, addr string) error {
	p := port()
	srvPath, srv := namedHelper(t, "ue")
	cliPath, cli := namedHelper(t, "uc")
	echo := startIn(t, b, srvPath, "udp-echo", hostPort(addr, p))
	echo.WaitLine(t, "listening", 30*time.Second)
	c := startIn(t, a, cliPath, "udp-send", hostPort(addr, p))
	c.Send(t, "700 50 echo")
	c.WaitLine(t, "sent", time.Minute)
	c.Send(t, "1200 7 echo")
	c.WaitLine(t, "sent", time.Minute)
	const bytes, datagrams = 700*50 + 1200*7, 57
	var checks []check
	for _, pair := range [][2]string{{cli, srv}, {srv, cli}} {
		edge := map[string]string{"src_workload": pair[0], "src_kind": "process", "dst_workload": pair[1], "dst_kind": "process"}
		checks = append(checks,
			wait("weir_udp_bytes_total", edge, bytes),
			wait("weir_udp_packets_total", edge, datagrams))
	}
	for _, who := range []string{cli, srv} {
		// Nothing else from or to either end: no edge to an address.
		checks = append(checks,
			stay("weir_udp_bytes_total", map[string]string{"dst_workload": who}, bytes),
			stay("weir_udp_bytes_total", map[string]string{"src_workload": who}, bytes),
			stay("weir_udp_packets_total", map[string]string{"src_workload": who}, datagrams))
	}
	return verify(w, append(checks, stay("weir_udp_drops_total", map[string]string{"dst_workload": srv}, 0))...)
}

// testUDPDrops sends faster than a receiver that never reads can hold:
// the kernel drops what its receive buffer cannot take, and weir's drops
// equal the socket's own drop counter, on the joined sender → receiver
// edge with the sender's bytes.
func testUDPDrops(t *testing.T, w *harness.Weir, a, b harness.Host, addr, family string) error {
	p := port()
	srvPath, srv := namedHelper(t, "ud")
	cliPath, cli := namedHelper(t, "us")
	deaf := startIn(t, b, srvPath, "udp-deaf", hostPort(addr, p))
	deaf.WaitLine(t, "listening", 30*time.Second)
	c := startIn(t, a, cliPath, "udp-send", hostPort(addr, p))
	c.Send(t, "1000 3000")
	c.WaitLine(t, "sent", time.Minute)
	drops := socketDrops(t, b, family, p)
	if drops == 0 {
		t.Fatalf("the receiver dropped nothing")
	}
	t.Logf("kernel: %d of 3000 datagrams dropped at the receiver", drops)
	return verify(w,
		wait("weir_udp_drops_total", map[string]string{"src_workload": cli, "dst_workload": srv}, float64(drops)),
		wait("weir_udp_packets_total", map[string]string{"src_workload": cli, "dst_workload": srv}, 3000),
		wait("weir_udp_bytes_total", map[string]string{"src_workload": cli, "dst_workload": srv}, 3000*1000),
		stay("weir_udp_drops_total", map[string]string{"dst_workload": srv}, float64(drops)),
		stay("weir_udp_bytes_total", map[string]string{"src_workload": cli}, 3000*1000),
		stay("weir_udp_bytes_total", map[string]string{"dst_workload": srv}, 3000*1000))
}

// socketDrops reads the drops of the UDP socket bound to port in host's
// namespace from /proc/net/udp (or udp6): the last column.
func socketDrops(t *testing.T, h harness.Host, family string, port int) uint64 {
	t.Helper()
	file := "/proc/net/udp"
	if family == "ipv6" {
		file = "/proc/net/udp6"
	}
	out, err := exec.Command("ip", "netns", "exec", h.NS, "cat", file).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", file, h.NS, err)
	}
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1], suffix) {
			continue
		}
		n, err := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err != nil {
			t.Fatalf("drops of %q: %v", line, err)
		}
		return n
	}
	t.Fatalf("no socket on port %d in %s:\n%s", port, file, out)
	return 0
}

// testUDPPeerCap sends from one socket to eight remotes, at a cap of four:
// the four beyond the cap count under dst_workload="other", and their
// datagrams as collector loss udp_peer_cap (which also counts the folds of
// other tests' sockets: at least 40).
func testUDPPeerCap(t *testing.T, w *harness.Weir, a harness.Host, addr string) error {
	base := port()
	var peers []string
	for i := range 8 {
		peers = append(peers, hostPort(addr, base+i))
	}
	before := lossOf(t, w, "udp_peer_cap")
	cliPath, cli := namedHelper(t, "up")
	c := startIn(t, a, cliPath, append([]string{"udp-send"}, peers...)...)
	c.Send(t, "300 10")
	c.WaitLine(t, "sent", time.Minute)
	if err := verify(w,
		wait("weir_udp_packets_total", map[string]string{"src_workload": cli}, 80),
		wait("weir_udp_bytes_total", map[string]string{"src_workload": cli}, 80*300),
		wait("weir_udp_packets_total", map[string]string{"src_workload": cli, "dst_workload": "other"}, 40),
		wait("weir_udp_packets_total", map[string]string{"src_workload": cli, "dst_workload": addr}, 40)); err != nil {
		return err
	}
	// The loss counts the folds of every UDP socket of the machine, where
	// other tests may talk to more than four remotes from one socket too:
	// this socket's share is the 40 on the other edge above.
	deadline := time.Now().Add(metricsWait)
	for lossOf(t, w, "udp_peer_cap")-before < 40 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if got := lossOf(t, w, "udp_peer_cap") - before; got < 40 {
		return fmt.Errorf("udp_peer_cap loss grew by %v, want 40 or more", got)
	} else if got > 40 {
		t.Logf("udp_peer_cap loss grew by %v: 40 of this socket, the rest of other sockets on the machine", got)
	}
	return nil
}

// lossOf is the reducer's weir_reducer_collector_loss_total for reason.
func lossOf(t *testing.T, w *harness.Weir, reason string) float64 {
	t.Helper()
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	return m.Sum("weir_reducer_collector_loss_total", map[string]string{"reason": reason})
}
