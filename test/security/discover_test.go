package security

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedDiscoverWithoutSysAdmin: connections opened between two
// fresh network namespaces before the collector starts are reported by a
// collector running as user nobody with only the four capabilities (no
// CAP_SYS_ADMIN, so no setns): both ends, with their owners, and exactly
// the bytes moved after it started; a connection accepted later from the
// listener found at start has the listener's owner.
func TestPrivilegedDiscoverWithoutSysAdmin(t *testing.T) {
	harness.RequireRoot(t)
	setpriv := requireSetpriv(t)
	bin := copyCollector(t)
	var names []string
	for _, c := range collectorCaps {
		names = append(names, c.name)
	}
	a, b := harness.TwoHosts(t, "dsc")
	const conns, request, response = 3, 70_001, 5_003
	port := harness.FreePort(t)
	listen := net.JoinHostPort(b.IPv4, strconv.Itoa(port))
	harness.Start(t, "flowsrv", b.Exec(peerBin(t, "flowsrv"), "-listen", listen, "-conns", strconv.Itoa(conns+1), "-rounds", "0",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...).
		WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "flowcli", a.Exec(peerBin(t, "flowcli"), "-connect", listen, "-conns", strconv.Itoa(conns), "-hold", "-more",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	cli.WaitLine(t, "done", 20*time.Second) // one round before the collector

	stub := harness.StartIngestStub(t)
	httpPort := harness.FreePort(t)
	col := harness.Start(t, "weir-collector", unprivilegedCollector(t, setpriv, bin, names,
		"--reducer", stub.Addr, "--interval", "1s", "--node-name", "dsc-node", "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort))...)
	harness.WaitFor(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort), 30*time.Second, "the collector's session", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1 && m.Sum("weir_collector_acks_received_total", nil) >= 2
	})

	cli.Send(t, "again")
	cli.WaitLine(t, "done", 20*time.Second)
	// One more connection, accepted after start from the listener found
	// at start (MPTCP, as Go makes it, where the kernel has MPTCP).
	late := harness.Start(t, "flowcli", a.Exec(peerBin(t, "flowcli"), "-connect", listen, "-conns", "1",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	if err := late.Wait(20 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, late.Stderr())
	}
	nsA, nsB := a.NetNSInode(t), b.NetNSInode(t)
	ends := func() (client, server, accepted []harness.StubSocket) {
		for _, s := range stub.Sockets(func(harness.StubSocket) bool { return true }) {
			switch {
			case s.NewConnection:
				if s.NetNS == nsB && s.Local.Port() == uint16(port) {
					accepted = append(accepted, s)
				}
			case s.Closed:
			case s.NetNS == nsA && s.Remote.Port() == uint16(port):
				client = append(client, s)
			case s.NetNS == nsB && s.Local.Port() == uint16(port):
				server = append(server, s)
			}
		}
		return client, server, accepted
	}
	exact := func(ss []harness.StubSocket, n int, comm string, sent, recv uint64) bool {
		if len(ss) != n {
			return false
		}
		for _, s := range ss {
			if s.Comm != comm || s.BytesSent != sent || s.BytesReceived != recv {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		client, server, accepted := ends()
		if exact(client, conns, cliName, request, response) && exact(server, conns, srvName, response, request) &&
			exact(accepted, 1, srvName, response, request) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d client ends (%s) with %d sent, %d received and %d server ends (%s) the other way, found at start, and one server end accepted since; got\nclient %+v\nserver %+v\naccepted %+v\ncollector:\n%s",
				conns, cliName, request, response, conns, srvName, client, server, accepted, col.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cli.CloseStdin()
	if err := cli.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
}
