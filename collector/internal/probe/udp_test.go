package probe

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// udpSamples returns the sampled records of socket cookie by remote.
func udpSamples(t *testing.T, p *Probe, local netip.AddrPort) map[netip.AddrPort]UDPRecord {
	t.Helper()
	out := map[netip.AddrPort]UDPRecord{}
	complete, err := p.SampleUDP(func(r UDPRecord) {
		if r.Local.Port() == local.Port() {
			out[r.Remote] = r
		}
	})
	// A walk over open files is never complete (walk.go).
	if err != nil || complete == p.udp.fileWalk {
		t.Fatalf("SampleUDP: complete %v (open files' walk %v), %v", complete, p.udp.fileWalk, err)
	}
	return out
}

// udpConfig is the default configuration with UDP on.
func udpConfig() Config {
	cfg := DefaultConfig()
	cfg.UDP.Enabled = true
	return cfg
}

func TestPrivilegedUDP(t *testing.T) {
	requirePrivileged(t)
	p, err := Open(udpConfig())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()

	for _, net_ := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(net_.network, func(t *testing.T) {
			srv, err := net.ListenPacket(net_.network, net_.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			cli, err := net.ListenPacket(net_.network, net_.addr)
			if err != nil {
				t.Fatal(err)
			}
			srvAddr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			cliAddr := cli.LocalAddr().(*net.UDPAddr).AddrPort()
			buf := make([]byte, 2000)
			for i := range 5 {
				if _, err := cli.WriteTo(make([]byte, 100+i), net.UDPAddrFromAddrPort(srvAddr)); err != nil {
					t.Fatal(err)
				}
				n, from, err := srv.ReadFrom(buf)
				if err != nil || n != 100+i {
					t.Fatalf("read %d %v", n, err)
				}
				if _, err := srv.WriteTo(buf[:n], from); err != nil {
					t.Fatal(err)
				}
				if _, _, err := cli.ReadFrom(buf); err != nil {
					t.Fatal(err)
				}
			}
			want := uint64(100 + 101 + 102 + 103 + 104)
			got := udpSamples(t, p, cliAddr)[srvAddr]
			if got.BytesSent != want || got.DatagramsSent != 5 || got.BytesReceived != want || got.DatagramsReceived != 5 {
				t.Errorf("client's record of the server: %+v, want %d bytes and 5 datagrams both ways", got, want)
			}
			if got.Owner.PID != uint32(os.Getpid()) {
				t.Errorf("owner %+v, want pid %d", got.Owner, os.Getpid())
			}
			s := udpSamples(t, p, srvAddr)[cliAddr]
			if s.BytesSent != want || s.DatagramsReceived != 5 {
				t.Errorf("server's record of the client: %+v", s)
			}
			// The close writes the final counters.
			cookie := got.Cookie
			if err := cli.Close(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				r, err := p.ReadUDP()
				if err != nil {
					t.Fatal(err)
				}
				if r.Cookie == cookie {
					if r.Kind != UDPClose || r.BytesSent != want || r.Remote != srvAddr {
						t.Errorf("close record %+v", r)
					}
					return
				}
			}
			t.Errorf("no close record for cookie %d", cookie)
		})
	}
}

// TestPrivilegedLingerReset: close() with SO_LINGER 0 moves the client to
// CLOSE and then sends the RST: the close event carries no reset, and an
// EventReset follows with the final counters and the reset sent; the
// server's close event carries the reset received.
func TestPrivilegedLingerReset(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	ln := listen(t, "tcp4", "127.0.0.1:0")
	cp := dialPair(t, ln)
	cp.exchange(t, 100, 100)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	if err := cp.client.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := cp.client.Close(); err != nil {
		t.Fatal(err)
	}
	reset := r.wait(t, "client reset", onPorts(EventReset, client.Port(), server.Port()))
	if reset.Counters.ResetsSent != 1 || reset.Counters.ResetsRecv != 0 {
		t.Errorf("client reset event: %+v", reset.Counters)
	}
	closed := r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))
	if closed.Counters.ResetsSent != 0 || closed.Counters.BytesAcked != 100 {
		t.Errorf("client close event: %+v", closed.Counters)
	}
	// The server learns of the RST on its next read.
	buf := make([]byte, 1)
	_, _ = cp.server.Read(buf)
	srv := r.wait(t, "server close", onPorts(EventClose, server.Port(), client.Port()))
	if srv.Counters.ResetsRecv != 1 || srv.Counters.ResetsSent != 0 {
		t.Errorf("server close event: %+v", srv.Counters)
	}
	cp.server.Close()
}
