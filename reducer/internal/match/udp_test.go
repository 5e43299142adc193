package match

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// udpEngine is an engine with a join window of 2 s, past its first window.
func udpEngine(t *testing.T) (*Engine, *clock) {
	e, c := newWindowEngine(t, 2*time.Second)
	c.advance(time.Hour)
	return e, c
}

func udpFlow(proc uint32, local, remote string, netns uint32, sent, dgSent, recv, dgRecv uint64) UDPFlow {
	return UDPFlow{Process: proc, Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), Netns: netns,
		BytesSent: sent, DatagramsSent: dgSent, BytesReceived: recv, DatagramsReceived: dgRecv}
}

func wantLines(t *testing.T, e *Engine, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := healthLines(e); !slices.Equal(got, want) {
		t.Errorf("edges:\ngot:\n  %s\nwant:\n  %s", join(got), join(want))
	}
}

// TestUDPJoin: the two ends of a UDP exchange, reported in different
// batches, count on one process → process edge each way, from each sender's
// view; the first end waits for the second, within the join window.
func TestUDPJoin(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cliLocal, srvRem string // the client's local address; the server's view of it
		cliNode          string
		cliNetns         uint32
		remote           string // where the client sends
		srvLocal         string
	}{
		{name: "namespaces, client bound to any", cliLocal: "0.0.0.0:5000", srvRem: "10.0.0.1:5000", cliNode: "node-a", cliNetns: 1, remote: "10.0.0.2:53", srvLocal: "10.0.0.2:53"},
		{name: "namespaces, v6, both bound to any", cliLocal: "[::]:5000", srvRem: "[2001:db8::1]:5000", cliNode: "node-a", cliNetns: 1, remote: "[2001:db8::2]:53", srvLocal: "[::]:53"},
		{name: "namespaces, dual-stack server bound to [::]", cliLocal: "10.0.0.1:5000", srvRem: "10.0.0.1:5000", cliNode: "node-a", cliNetns: 1, remote: "10.0.0.2:53", srvLocal: "[::]:53"},
		{name: "two nodes", cliLocal: "10.0.0.1:5000", srvRem: "10.0.0.1:5000", cliNode: "node-b", cliNetns: 1, remote: "10.0.0.2:53", srvLocal: "10.0.0.2:53"},
		{name: "loopback", cliLocal: "127.0.0.1:5000", srvRem: "127.0.0.1:5000", cliNode: "node-a", cliNetns: 2, remote: "127.0.0.1:53", srvLocal: "127.0.0.1:53"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, clk := udpEngine(t)
			sa := openSession(t, e, "node-a", 1)
			sc := sa
			if tc.cliNode != "node-a" {
				sc = openSession(t, e, tc.cliNode, 1)
			}
			seqs := map[*Session]uint64{}
			next := func(s *Session) uint64 { seqs[s]++; return seqs[s] }
			// The server's node knows its address from another socket, as
			// a real node does.
			srvAddr := netip.MustParseAddrPort(tc.remote).Addr()
			apply(t, e, sa, Batch{Sequence: next(sa), Processes: []Process{{Handle: 1, PID: 20, Comm: "srv"}},
				UDP: []UDPFlow{udpFlow(1, netip.AddrPortFrom(srvAddr, 9).String(), "192.0.2.1:9", 2, 0, 0, 0, 0)}})
			apply(t, e, sc, Batch{Sequence: next(sc), Processes: []Process{{Handle: 7, PID: 10, Comm: "cli"}}})
			const cliProc = 7
			cli := udpFlow(cliProc, tc.cliLocal, tc.remote, tc.cliNetns, 700, 7, 300, 3)
			cli.PeerLocal = sc == sa
			apply(t, e, sc, Batch{Sequence: next(sc), UDP: []UDPFlow{cli}})
			wantLines(t, e) // held for the server's end
			clk.advance(time.Second)
			srv := udpFlow(1, tc.srvLocal, tc.srvRem, 2, 300, 3, 700, 7)
			srv.Drops = 4
			srv.PeerLocal = sc == sa
			apply(t, e, sa, Batch{Sequence: next(sa), UDP: []UDPFlow{srv}})
			wantLines(t, e,
				"cli -> srv retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=700/7 drops=4",
				"srv -> cli retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=300/3 drops=0")
			// Later traffic counts at once on the joined edges.
			clk.advance(time.Second)
			apply(t, e, sa, Batch{Sequence: next(sa), UDP: []UDPFlow{udpFlow(1, tc.srvLocal, tc.srvRem, 2, 10, 1, 0, 0)}})
			wantLines(t, e,
				"cli -> srv retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=700/7 drops=4",
				"srv -> cli retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=310/4 drops=0")
			if n := testutil.ToFloat64(e.oneSided); n != 0 {
				t.Errorf("%v ends unjoined", n)
			}
			if e.nheld != 0 {
				t.Errorf("%d held", e.nheld)
			}
		})
	}
}

// TestUDPUnjoined: an end whose peer does not report within the join
// window counts one-sided, toward its remote's address; its peer's late
// report joins it and counts nothing twice; ends are forgotten after the
// TTL; loopback ends of two namespaces never join.
func TestUDPUnjoined(t *testing.T) {
	e, clk := udpEngine(t)
	s := openSession(t, e, "node-a", 1)
	// The address of the server's node, from another socket: a fleet address.
	apply(t, e, s, Batch{Sequence: 1, Processes: []Process{{Handle: 1, PID: 10, Comm: "cli"}, {Handle: 2, PID: 20, Comm: "srv"}},
		UDP: []UDPFlow{udpFlow(2, "10.0.0.2:9", "192.0.2.1:9", 2, 0, 0, 0, 0)}})
	apply(t, e, s, Batch{Sequence: 2, UDP: []UDPFlow{
		udpFlow(1, "10.0.0.1:5000", "10.0.0.2:53", 1, 100, 1, 0, 0),
		udpFlow(1, "127.0.0.1:6000", "127.0.0.1:7000", 1, 40, 1, 0, 0),
	}})
	wantLines(t, e)
	clk.advance(3 * time.Second)
	e.PublishDue()
	wantLines(t, e,
		"cli -> 10.0.0.2 retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=100/1 drops=0",
		"cli -> 127.0.0.1 retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=40/1 drops=0")
	if n := testutil.ToFloat64(e.oneSided); n != 2 {
		t.Errorf("%v ends unjoined, want 2", n)
	}
	// The server reports late: its received view is the client's sent one,
	// counted already; what it sends joins the client. The loopback
	// receiver is in another namespace: no join, its received view counts
	// from the loopback address.
	apply(t, e, s, Batch{Sequence: 3, UDP: []UDPFlow{
		udpFlow(2, "10.0.0.2:53", "10.0.0.1:5000", 2, 50, 1, 100, 1),
		udpFlow(2, "127.0.0.1:7000", "127.0.0.1:6000", 2, 0, 0, 40, 1),
	}})
	clk.advance(3 * time.Second)
	e.PublishDue()
	wantLines(t, e,
		"cli -> 10.0.0.2 retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=100/1 drops=0",
		"cli -> 127.0.0.1 retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=40/1 drops=0",
		"127.0.0.1 -> srv retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=40/1 drops=0",
		"srv -> cli retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=50/1 drops=0")
	// Quiet past the TTL: forgotten.
	clk.advance(2 * udpEndTTL)
	e.PublishDue()
	if n := len(e.udp.ends); n != 0 {
		t.Errorf("%d UDP ends kept after the TTL", n)
	}
	if n := len(e.udp.byPorts); n != 0 {
		t.Errorf("%d port pairs kept after the TTL", n)
	}
	if e.nheld != 0 {
		t.Errorf("%d held", e.nheld)
	}
}

// FuzzUDPJoin applies random UDP flows of a few sockets, on two nodes, in
// random batches and at random times: whatever joins, waits or counts
// one-sided, once every window has passed each datagram sent counts once,
// and each drop once.
func FuzzUDPJoin(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{0x13, 0x57, 0x9b, 0xdf, 0x02, 0x46, 0x8a, 0xce, 0xff, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) { udpFuzzBody(t, data) })
}

// udpFuzzBody is one input of FuzzUDPJoin: four bytes a flow.
func udpFuzzBody(t *testing.T, data []byte) {
	addrs := []string{"10.0.0.1", "10.0.0.2", "127.0.0.1", "0.0.0.0", "192.0.2.9"}
	ports := []uint16{53, 5000, 6000}
	{
		e, clk := udpEngine(t)
		sess := []*Session{openSession(t, e, "node-a", 1), openSession(t, e, "node-b", 1)}
		seq := []uint64{0, 0}
		for i, s := range sess {
			seq[i]++
			apply(t, e, s, Batch{Sequence: seq[i], Processes: []Process{{Handle: 1, PID: 10, Comm: "p"}}})
		}
		var sent, dgrams, drops uint64
		for len(data) >= 4 {
			b := data[:4]
			data = data[4:]
			n := int(b[0] & 1)
			local := netip.AddrPortFrom(netip.MustParseAddr(addrs[int(b[1])%len(addrs)]), ports[int(b[1]>>4)%len(ports)])
			rAddr := addrs[int(b[2])%len(addrs)]
			if rAddr == "0.0.0.0" {
				rAddr = "10.0.0.1"
			}
			remote := netip.AddrPortFrom(netip.MustParseAddr(rAddr), ports[int(b[2]>>4)%len(ports)])
			fl := UDPFlow{Process: 1, Local: local, Remote: remote, Netns: uint32(b[0]>>1) % 2,
				BytesSent: uint64(b[3]), DatagramsSent: uint64(b[3] % 7), Drops: uint64(b[3] % 3), PeerLocal: b[0]&2 != 0}
			if b[0]&4 != 0 {
				fl.Remote = netip.AddrPort{} // other peers
			}
			sent += fl.BytesSent
			dgrams += fl.DatagramsSent
			drops += fl.Drops
			seq[n]++
			apply(t, e, sess[n], Batch{Sequence: seq[n], UDP: []UDPFlow{fl}})
			clk.advance(time.Duration(b[3]) * 20 * time.Millisecond)
			if b[0]&8 != 0 {
				e.PublishDue()
			}
		}
		clk.advance(time.Minute)
		e.PublishDue()
		var gotB, gotP, gotD uint64
		for _, s := range e.Snapshot(nil) {
			gotB += s.Value(aggregate.UDPBytes)
			gotP += s.Value(aggregate.UDPPackets)
			gotD += s.Value(aggregate.UDPDrops)
		}
		if gotB != sent || gotP != dgrams || gotD != drops {
			t.Fatalf("counted %d B, %d datagrams, %d drops; sent %d, %d, %d", gotB, gotP, gotD, sent, dgrams, drops)
		}
		if e.nheld != 0 {
			t.Fatalf("%d held after every window", e.nheld)
		}
	}
}

// BenchmarkUDPJoined applies batches of 10k UDP records from two nodes
// whose records are the two ends of 10k joined exchanges (a client bound to
// any address): the cost of a joined record, its resolution and edge
// lookups included.
func BenchmarkUDPJoined(b *testing.B) {
	const n = 10000
	e, clk := newWindowEngine(b, 2*time.Second)
	clk.advance(time.Hour)
	nodes := [2]*Session{openSession(b, e, "node-a", 1), openSession(b, e, "node-b", 1)}
	var batches [2]Batch
	for side := range batches {
		batches[side].Processes = []Process{{Handle: 1, Comm: []string{"client", "server"}[side]}}
		for i := range n {
			c := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(10000+i))
			sv := netip.MustParseAddrPort("10.0.0.2:53")
			f := UDPFlow{Process: 1, Local: netip.AddrPortFrom(netip.IPv4Unspecified(), c.Port()), Remote: sv, BytesSent: 60, DatagramsSent: 1}
			if side == 1 {
				f = UDPFlow{Process: 1, Local: sv, Remote: c, BytesSent: 90, DatagramsSent: 1}
			}
			batches[side].UDP = append(batches[side].UDP, f)
		}
	}
	// The client's node reports its address from another socket.
	batches[0].UDP = append(batches[0].UDP, UDPFlow{Process: 1, Local: netip.MustParseAddrPort("10.0.0.1:9"), Remote: netip.MustParseAddrPort("192.0.2.1:9")})
	seq := [2]uint64{}
	for side, s := range nodes {
		seq[side]++
		batches[side].Sequence = seq[side]
		if err := e.Apply(s, &batches[side]); err != nil {
			b.Fatal(err)
		}
		batches[side].Processes = nil
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		side := i & 1
		seq[side]++
		batches[side].Sequence = seq[side]
		if err := e.Apply(nodes[side], &batches[side]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*n/b.Elapsed().Seconds(), "records/s")
	if held := e.nheld; held != 0 {
		b.Errorf("%d ends held", held)
	}
}
