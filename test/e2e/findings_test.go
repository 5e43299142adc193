package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// Tests that would have caught the findings of the foundation review: each
// runs the real binaries between network namespaces and asserts exact
// counts where the kernel's counters are exact.

// renamed copies flowsrv and flowcli under other names, so that the edge
// between them (named by comm) belongs to one test only.
func renamed(t *testing.T, srvName, cliName string) (srv, cli string) {
	t.Helper()
	bin, dir := harness.Binaries(t), t.TempDir()
	cp := func(from, to string) string {
		b, err := os.ReadFile(filepath.Join(bin, from))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, to)
		if err := os.WriteFile(path, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return cp("flowsrv", srvName), cp("flowcli", cliName)
}

func edgeLabels(src, dst string) map[string]string {
	return map[string]string{"src_workload": src, "src_kind": "process", "dst_workload": dst, "dst_kind": "process"}
}

// TestPrivilegedExistingIdleConnection opens a connection between two
// namespaces before the collector starts. Then the server pushes 4 MiB in
// one write while the client does not read (the server blocks on a full
// window); the client drains it with splice(2) into a pipe and /dev/null,
// never calling recv, and both stay idle. Within two report intervals the
// reducer shows exactly 4,194,304 bytes server → client (IPv4 and IPv6,
// each with a collector of its own), both ends named
// by their comm (copies of flowsrv and flowcli under names unique to the
// test process), and one active connection. It catches a collector that
// misses sockets opened before it started, that only refreshes counters on
// the send/recv tracepoints (splice fires neither on the receiver, and the
// sender's last ACKs arrive after its last send), or that reads counters
// only in its own network namespace.
func TestPrivilegedExistingIdleConnection(t *testing.T) {
	harness.RequireRoot(t)
	a, b := harness.BridgedHosts(t, "idle")
	for i, tc := range []struct {
		name   string
		server string
	}{
		{"ipv4", b.IPv4},
		{"ipv6", b.IPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			existingIdle(t, a, b, net.JoinHostPort(tc.server, strconv.Itoa(8080+i)), i)
		})
	}
}

func existingIdle(t *testing.T, a, b harness.Host, listen string, i int) {
	const interval = time.Second
	const push = 4 << 20
	srvBin, cliBin := renamed(t, fmt.Sprintf("i%dsrv%d", i, os.Getpid()), fmt.Sprintf("i%dcli%d", i, os.Getpid()))
	up := edgeLabels(filepath.Base(cliBin), filepath.Base(srvBin))
	down := edgeLabels(filepath.Base(srvBin), filepath.Base(cliBin))
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})

	srv := harness.Start(t, "server", b.Exec(srvBin, "-listen", listen, "-push", strconv.Itoa(push))...)
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "client", a.Exec(cliBin, "-connect", listen, "-splice", strconv.Itoa(push))...)
	cli.WaitLine(t, "connected", 10*time.Second)

	// The connection exists; now the collector starts and finds it.
	colPort := harness.FreePort(t)
	col := harness.StartCollector(t, w.GRPCAddr, colPort, interval)
	defer col.Stop(10 * time.Second)
	colURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort)
	harness.WaitFor(t, colURL, 15*time.Second, "the collector's first report", func(m harness.Metrics) bool {
		v, ok := m.Value("weir_collector_connected", nil)
		return ok && v == 1 && m.Sum("weir_collector_batches_sent_total", nil) >= 1
	})

	srv.Send(t, "go")
	srv.WaitLine(t, "sending", 10*time.Second)
	time.Sleep(500 * time.Millisecond) // the client's receive queue fills; the server blocks in write
	cli.Send(t, "drain")
	cli.WaitLine(t, fmt.Sprintf("drained %d", push), 20*time.Second)
	srv.WaitLine(t, fmt.Sprintf("sent %d", push), 10*time.Second)
	drained := time.Now()

	read := func(m harness.Metrics) (float64, float64, float64) {
		u, _ := m.Value("weir_tcp_bytes_total", up)
		d, _ := m.Value("weir_tcp_bytes_total", down)
		act, _ := m.Value("weir_tcp_active_connections", up)
		return u, d, act
	}
	m := harness.WaitFor(t, w.MetricsURL, 2*interval, "4 MiB server → client and one active connection", func(m harness.Metrics) bool {
		_, d, act := read(m)
		return d == push && act == 1
	})
	t.Logf("the pushed bytes were on /metrics %s after the drain", time.Since(drained).Round(10*time.Millisecond))
	if u, _, _ := read(m); u != 0 {
		t.Errorf("bytes client → server = %v, want 0 (the client never sent)", u)
	}
	// Idle from here: the figures stay exact.
	time.Sleep(2 * interval)
	if _, d, act := read(scrapeOrFatal(t, w.MetricsURL)); d != push || act != 1 {
		t.Errorf("after two idle intervals: %v bytes server → client and %v active, want %d and 1", d, act, push)
	}
	cli.CloseStdin()
	if err := cli.Wait(10 * time.Second); err != nil {
		t.Fatalf("client: %v\n%s", err, cli.Stderr())
	}
}

// TestPrivilegedOneSidedExactWhileIdle checks each end on its own: the
// collector streams to an ingest stub (in place of the reducer) that adds
// up the deltas reported for every socket end, so that no join of the two
// ends can hide a missing or late count on one of them. A server in one
// namespace sends N bytes to a client in another, then both stay idle.
// The first report read after the last ACK has arrived must already carry
// exactly N sent bytes for the server's end (and N received for the
// client's), IPv4 and IPv6: counters are read at poll time in every
// namespace, not only when the socket's owner calls send or recv.
func TestPrivilegedOneSidedExactWhileIdle(t *testing.T) {
	harness.RequireRoot(t)
	const interval = time.Second
	const request, response = 101, 3_000_017
	bin := harness.Binaries(t)
	a, b := harness.BridgedHosts(t, "oneside")
	stub := harness.StartIngestStub(t)
	harness.StartCollector(t, stub.Addr, harness.FreePort(t), interval)

	for i, tc := range []struct {
		name           string
		server, client string
	}{
		{"ipv4", b.IPv4, a.IPv4},
		{"ipv6", b.IPv6, a.IPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := net.JoinHostPort(tc.server, strconv.Itoa(8080+i))
			srvAddr := netip.MustParseAddrPort(listen)
			cliAddr := netip.MustParseAddr(tc.client)
			srv := harness.Start(t, "flowsrv", b.Exec(filepath.Join(bin, "flowsrv"), "-listen", listen,
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			srv.WaitLine(t, "listening", 10*time.Second)
			cli := harness.Start(t, "flowcli", a.Exec(filepath.Join(bin, "flowcli"), "-connect", listen, "-hold",
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			cli.WaitLine(t, "done", 20*time.Second)
			done := time.Now()

			// Every ACK is in well within 100 ms on a bridge. The first
			// batch whose counters were read after that (Batch.time) must be
			// exact, and it is read within one interval.
			settled := done.Add(100 * time.Millisecond)
			polled, _ := stub.WaitPollAfter(t, settled, interval+5*time.Second)
			if late := polled.Sub(settled); late > interval+250*time.Millisecond {
				t.Errorf("the next counter read came %s later, more than one interval", late)
			}
			server, client := ends(t, stub, srvAddr, cliAddr, b.NetNSInode(t), a.NetNSInode(t))
			if server.BytesSent != response || server.BytesReceived != request {
				t.Errorf("server end (%s): sent %d, received %d; want %d and %d", server.Local, server.BytesSent, server.BytesReceived, response, request)
			}
			if client.BytesReceived != response || client.BytesSent != request {
				t.Errorf("client end (%s): sent %d, received %d; want %d and %d", client.Local, client.BytesSent, client.BytesReceived, request, response)
			}

			// Idle for two more intervals: nothing moves.
			time.Sleep(2 * interval)
			s2, c2 := ends(t, stub, srvAddr, cliAddr, b.NetNSInode(t), a.NetNSInode(t))
			if s2.BytesSent != response || c2.BytesReceived != response || s2.BytesReceived != request || c2.BytesSent != request {
				t.Errorf("after two idle intervals: server sent %d received %d, client sent %d received %d; want %d, %d, %d, %d",
					s2.BytesSent, s2.BytesReceived, c2.BytesSent, c2.BytesReceived, response, request, request, response)
			}
			cli.CloseStdin()
			if err := cli.Wait(10 * time.Second); err != nil {
				t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
			}
			if err := srv.Wait(10 * time.Second); err != nil {
				t.Fatalf("flowsrv: %v\n%s", err, srv.Stderr())
			}
		})
	}
}

// ends finds the one server end (local = the listen address, remote = the
// client, in the server's namespace) and the one client end of the test's
// connection in the stub.
func ends(t *testing.T, stub *harness.IngestStub, srv netip.AddrPort, cli netip.Addr, srvNS, cliNS uint32) (server, client harness.StubSocket) {
	t.Helper()
	s := stub.Sockets(func(x harness.StubSocket) bool { return x.NetNS == srvNS && x.Local == srv && x.Remote.Addr() == cli })
	c := stub.Sockets(func(x harness.StubSocket) bool { return x.NetNS == cliNS && x.Remote == srv && x.Local.Addr() == cli })
	if len(s) != 1 || len(c) != 1 {
		t.Fatalf("the stub has %d server ends and %d client ends of the connection to %s, want 1 and 1: %+v %+v", len(s), len(c), srv, s, c)
	}
	return s[0], c[0]
}

// TestPrivilegedResyncExact moves bytes on held connections between two
// namespaces, forces the collector to reconnect, moves more bytes on the
// same connections, and checks the edge (used by this test only) on the
// reducer's /metrics with ==:
//   - through a proxy that cuts the stream, with the same reducer: the
//     reducer drops the old session's sockets and the collector announces
//     them again from a baseline, so the edge holds both phases exactly,
//     nothing counted twice;
//   - with the reducer restarted: the new reducer knows nothing from before,
//     so the edge holds exactly the bytes sent after the reconnect.
func TestPrivilegedResyncExact(t *testing.T) {
	harness.RequireRoot(t)
	const interval = time.Second
	const conns, request, response = 3, 40_009, 7_013
	a, b := harness.BridgedHosts(t, "resync")

	for i, tc := range []struct {
		name    string
		restart bool
	}{
		{"stream cut, same reducer", false},
		{"reducer restarted", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvBin, cliBin := renamed(t, fmt.Sprintf("r%dsrv%d", i, os.Getpid()), fmt.Sprintf("r%dcli%d", i, os.Getpid()))
			up := edgeLabels(filepath.Base(cliBin), filepath.Base(srvBin))
			down := edgeLabels(filepath.Base(srvBin), filepath.Base(cliBin))
			w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})
			proxy := harness.StartProxy(t, w.GRPCAddr)
			colPort := harness.FreePort(t)
			harness.StartCollector(t, proxy.Addr, colPort, interval)
			colURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort)

			listen := net.JoinHostPort(b.IPv4, strconv.Itoa(8090+i))
			harness.Start(t, "server", b.Exec(srvBin, "-listen", listen, "-conns", strconv.Itoa(conns), "-rounds", "0",
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...).
				WaitLine(t, "listening", 10*time.Second)
			cli := harness.Start(t, "client", a.Exec(cliBin, "-connect", listen, "-conns", strconv.Itoa(conns), "-hold", "-more",
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			cli.WaitLine(t, "done", 20*time.Second)
			read := func(m harness.Metrics) (float64, float64, float64) {
				u, _ := m.Value("weir_tcp_bytes_total", up)
				d, _ := m.Value("weir_tcp_bytes_total", down)
				act, _ := m.Value("weir_tcp_active_connections", up)
				return u, d, act
			}
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, "the first phase on the edge", func(m harness.Metrics) bool {
				u, d, act := read(m)
				return u == conns*request && d == conns*response && act == conns
			})

			// Force the reconnect while the connections are idle.
			before := scrapeOrFatal(t, colURL).Sum("weir_collector_stream_reconnects_total", nil)
			if tc.restart {
				w.RestartReducer(t)
			} else if n := proxy.Cut(); n == 0 {
				t.Fatal("the proxy carried no connection to cut")
			}
			harness.WaitFor(t, colURL, 30*time.Second, "the collector to reconnect", func(m harness.Metrics) bool {
				v, _ := m.Value("weir_collector_connected", nil)
				return v == 1 && m.Sum("weir_collector_stream_reconnects_total", nil) > before
			})
			time.Sleep(2 * interval) // the resync snapshot is in

			cli.Send(t, "again")
			cli.WaitLine(t, "done", 20*time.Second)
			wantUp, wantDown := float64(2*conns*request), float64(2*conns*response)
			if tc.restart {
				wantUp, wantDown = conns*request, conns*response
			}
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, fmt.Sprintf("exactly %v bytes up and %v down", wantUp, wantDown), func(m harness.Metrics) bool {
				u, d, act := read(m)
				return u == wantUp && d == wantDown && act == conns
			})
			time.Sleep(2 * interval) // nothing arrives late
			if u, d, act := read(scrapeOrFatal(t, w.MetricsURL)); u != wantUp || d != wantDown || act != conns {
				t.Errorf("two intervals later: %v up, %v down, %v active; want %v, %v, %d", u, d, act, wantUp, wantDown, conns)
			}
			cli.CloseStdin()
			if err := cli.Wait(10 * time.Second); err != nil {
				t.Fatalf("client: %v\n%s", err, cli.Stderr())
			}
		})
	}
}

// TestPrivilegedSocketCap starts a collector whose --max-sockets leaves
// room for 16 sockets beyond those already on the host (read from a first
// collector's weir_collector_sockets), then opens more connections than
// that between two namespaces, each end sending many times. The collector
// streams to an ingest stub:
//   - weir_collector_socket_cap_total is exactly the number of sockets
//     beyond the cap (sockets, not attempts, although each refused socket
//     sends 20 times);
//   - exactly as many of the test's sockets as there was room for are
//     announced, and each one carries exactly its own connection's bytes
//     (every connection moves a different amount): no refused socket's bytes
//     show up on a socket that was admitted.
//
// The cap is host-wide, so the arithmetic holds only if no other process
// opens or closes TCP sockets meanwhile. Each attempt checks that with the
// collector's own event counters (exactly the test's opens, no close); an
// attempt on a busy machine is repeated, for up to two minutes, and then
// the test fails.
func TestPrivilegedSocketCap(t *testing.T) {
	harness.RequireRoot(t)
	const budget, maxAttempts = 2 * time.Minute, 12
	a, b := harness.BridgedHosts(t, "cap")
	stub := harness.StartIngestStub(t)
	began := time.Now()
	for i := range maxAttempts {
		busy := socketCapAttempt(t, a, b, stub, 8080+i)
		if busy == "" {
			return
		}
		t.Logf("attempt %d: %s; again", i+1, busy)
		if time.Since(began) > budget {
			break
		}
	}
	t.Fatalf("the machine was never quiet enough for exact socket counts in %s", time.Since(began).Round(time.Second))
}

// socketCapAttempt runs one attempt. It returns why the machine was too busy
// for exact counts, or "" when the attempt was made (and its failures
// reported).
func socketCapAttempt(t *testing.T, a, b harness.Host, stub *harness.IngestStub, port int) (busy string) {
	t.Helper()
	// A short interval keeps the span that must be quiet short.
	const interval = 500 * time.Millisecond
	const room, rounds, base, step = 16, 20, 1_000, 1
	bin := harness.Binaries(t)
	listen := net.JoinHostPort(b.IPv4, strconv.Itoa(port))
	srvAddr := netip.MustParseAddrPort(listen)
	// The listener first, so that it is among the sockets already there.
	srv := harness.Start(t, "flowsrv", b.Exec(filepath.Join(bin, "flowsrv"), "-listen", listen, "-forever", "-echo")...)
	srv.WaitLine(t, "listening", 10*time.Second)
	defer srv.Stop(5 * time.Second)

	sockets := func(url string) float64 {
		t.Helper()
		m := harness.WaitFor(t, url, 15*time.Second, "weir_collector_sockets after a report", func(m harness.Metrics) bool {
			_, ok := m.Value("weir_collector_sockets", nil)
			return ok && m.Sum("weir_collector_batches_sent_total", nil) >= 1
		})
		v, _ := m.Value("weir_collector_sockets", nil)
		return v
	}
	colPort := harness.FreePort(t)
	first := harness.StartCollector(t, stub.Addr, colPort, interval)
	existing := sockets(fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort))
	first.Stop(10 * time.Second)
	maxSockets := int(existing) + room

	colPort = harness.FreePort(t)
	col := harness.StartCollector(t, stub.Addr, colPort, interval, "--max-sockets", strconv.Itoa(maxSockets))
	defer col.Stop(10 * time.Second)
	colURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort)
	// The scrapes' own keep-alive connection is a socket too: read until
	// two scrapes two intervals apart agree, so that it is counted already.
	tracked := -1.0
	for range 5 {
		v := sockets(colURL)
		if v == tracked {
			break
		}
		tracked = v
		time.Sleep(2 * interval)
	}
	before := scrapeOrFatal(t, colURL)
	if v, _ := before.Value("weir_collector_sockets", nil); v != tracked {
		return fmt.Sprintf("the tracked sockets keep changing (%v, then %v)", tracked, v)
	}
	free := maxSockets - int(tracked)
	if free < 8 || free > 4*room {
		return fmt.Sprintf("%d free slots under --max-sockets %d (%v sockets tracked, %v a moment before)", free, maxSockets, tracked, existing)
	}
	conns := free/2 + 10
	beyond := 2*conns - free
	t.Logf("--max-sockets %d, %v tracked, %d free; %d connections (%d sockets): %d beyond the cap", maxSockets, tracked, free, conns, 2*conns, beyond)

	cli := harness.Start(t, "flowcli", a.Exec(filepath.Join(bin, "flowcli"), "-connect", listen, "-hold",
		"-conns", strconv.Itoa(conns), "-rounds", strconv.Itoa(rounds), "-pace", "20ms",
		"-request-bytes", strconv.Itoa(base), "-response-bytes", strconv.Itoa(base), "-step", strconv.Itoa(step))...)
	defer cli.Stop(5 * time.Second)
	cli.WaitLine(t, "done", 30*time.Second)
	time.Sleep(3 * interval)

	m := scrapeOrFatal(t, colURL)
	if got := m.Sum("weir_collector_batches_sent_total", nil) - before.Sum("weir_collector_batches_sent_total", nil); got < 2 {
		t.Fatalf("%v batches sent since the connections opened, want at least 2", got)
	}
	delta := func(name string, labels map[string]string) float64 {
		return m.Sum(name, labels) - before.Sum(name, labels)
	}
	opens, closes := delta("weir_collector_events_total", map[string]string{"kind": "open"}), delta("weir_collector_events_total", map[string]string{"kind": "close"})
	if opens != float64(2*conns) || closes != 0 {
		return fmt.Sprintf("%v sockets opened and %v closed on the machine meanwhile, want exactly the test's %d and 0", opens, closes, 2*conns)
	}
	if got := delta("weir_collector_socket_cap_total", nil); got != float64(beyond) {
		t.Errorf("weir_collector_socket_cap_total grew by %v, want exactly %d (sockets beyond the cap)", got, beyond)
	}
	if v, _ := m.Value("weir_collector_sockets", nil); v != float64(maxSockets) {
		t.Errorf("weir_collector_sockets = %v, want the cap %d", v, maxSockets)
	}

	// The stub's view: the admitted sockets of the test's connections.
	session := 0
	for _, x := range stub.Sockets(func(harness.StubSocket) bool { return true }) {
		session = max(session, x.Session)
	}
	nsA, nsB := a.NetNSInode(t), b.NetNSInode(t)
	ours := stub.Sockets(func(x harness.StubSocket) bool {
		return x.Session == session && (x.NetNS == nsB && x.Local == srvAddr && x.Remote.IsValid() && x.Remote.Port() != 0 ||
			x.NetNS == nsA && x.Remote == srvAddr)
	})
	if len(ours) != free {
		t.Errorf("%d of the test's sockets were announced, want exactly the %d free slots", len(ours), free)
	}
	valid := map[uint64]bool{}
	for i := range conns {
		valid[uint64(rounds*(base+i*step))] = true
	}
	seen := map[uint64]int{}
	for _, x := range ours {
		// flowsrv echoes: each end sends what it receives, connection i
		// rounds*(base+i*step) bytes each way.
		if !valid[x.BytesSent] || x.BytesReceived != x.BytesSent {
			t.Errorf("socket %s → %s: sent %d, received %d; want one connection's own count, the same both ways",
				x.Local, x.Remote, x.BytesSent, x.BytesReceived)
		}
		seen[x.BytesSent]++
		if seen[x.BytesSent] > 2 {
			t.Errorf("%d sockets carry %d bytes, a count that only one connection (two ends) has", seen[x.BytesSent], x.BytesSent)
		}
	}
	cli.CloseStdin()
	if err := cli.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
	return ""
}
