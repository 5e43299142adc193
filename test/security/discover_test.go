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
// the bytes moved after it started.
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
	harness.Start(t, "flowsrv", b.Exec(peerBin(t, "flowsrv"), "-listen", listen, "-conns", strconv.Itoa(conns), "-rounds", "0",
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
	nsA, nsB := a.NetNSInode(t), b.NetNSInode(t)
	ends := func() (client, server []harness.StubSocket) {
		for _, s := range stub.Sockets(func(s harness.StubSocket) bool { return !s.Closed }) {
			switch {
			case s.NetNS == nsA && s.Remote.Port() == uint16(port):
				client = append(client, s)
			case s.NetNS == nsB && s.Local.Port() == uint16(port):
				server = append(server, s)
			}
		}
		return client, server
	}
	exact := func(ss []harness.StubSocket, comm string, sent, recv uint64) bool {
		if len(ss) != conns {
			return false
		}
		for _, s := range ss {
			if s.Comm != comm || s.BytesSent != sent || s.BytesReceived != recv || s.NewConnection {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		client, server := ends()
		if exact(client, cliName, request, response) && exact(server, srvName, response, request) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d client ends (%s) with %d sent, %d received and %d server ends (%s) the other way, not new; got\nclient %+v\nserver %+v\ncollector:\n%s",
				conns, cliName, request, response, conns, srvName, client, server, col.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cli.CloseStdin()
	if err := cli.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
}
