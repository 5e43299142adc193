package match

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// healthLines renders the retransmit, reset, failure and UDP values and the
// RTT observations of every edge that has any.
func healthLines(e *Engine) []string {
	var out []string
	for _, s := range e.Snapshot(nil) {
		var rtt aggregate.Histogram
		if s.Hists != nil {
			rtt = s.Hists[aggregate.TCPRTT]
		}
		v := func(id aggregate.MetricID) uint64 { return s.Value(id) }
		if v(aggregate.TCPRetransmits)|v(aggregate.TCPResets)|v(aggregate.TCPSynTimeouts)|v(aggregate.TCPConnectionsRefused)|
			v(aggregate.UDPBytes)|v(aggregate.UDPPackets)|v(aggregate.UDPDrops)|rtt.Count == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("%s -> %s retrans=%d resets=%d syn_timeouts=%d refused=%d rtt=%d/%.6f udp=%d/%d drops=%d",
			s.Key.Src.Name, s.Key.Dst.Name, v(aggregate.TCPRetransmits), v(aggregate.TCPResets), v(aggregate.TCPSynTimeouts),
			v(aggregate.TCPConnectionsRefused), rtt.Count, rtt.Sum, v(aggregate.UDPBytes), v(aggregate.UDPPackets), v(aggregate.UDPDrops)))
	}
	slices.Sort(out)
	return out
}

// TestHealth: retransmits count from the sender; a reset counts once, the
// larger of the sender's and the receiver's count, from the end that sent
// it; each RTT reading is one observation on the edge from its end.
func TestHealth(t *testing.T) {
	e, _ := newTestEngine(t, false)
	s := openSession(t, e, "node-a", 1)
	b := &Batch{Sequence: 1,
		Processes: []Process{{Handle: 1, PID: 10, Comm: "curl"}, {Handle: 2, PID: 20, Comm: "nginx"}},
		Sockets: []Socket{
			sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true),
			sock(2, 2, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true),
		},
		Stats: statsOf(stat{handle: 1, sent: 100, segsSent: 1}, stat{handle: 2, recv: 100, segsReceived: 1}),
	}
	b.Stats.Retransmits = []uint64{3, 0}
	b.Stats.ResetsSent = []uint64{1, 0}
	b.Stats.ResetsReceived = []uint64{0, 1}
	b.Stats.SrttUs = []uint32{250, 0}
	if err := e.Apply(s, b); err != nil {
		t.Fatal(err)
	}
	// The server's reset view arrives late; the client reports the same RST again: nothing more.
	b2 := &Batch{Sequence: 2, Stats: statsOf(stat{handle: 1, sent: 10, segsSent: 1}, stat{handle: 2, recv: 10, segsReceived: 1})}
	b2.Stats.SrttUs = []uint32{750, 500}
	if err := e.Apply(s, b2); err != nil {
		t.Fatal(err)
	}
	got := healthLines(e)
	want := []string{
		"curl -> nginx retrans=3 resets=1 syn_timeouts=0 refused=0 rtt=2/0.001000 udp=0/0 drops=0",
		"nginx -> curl retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=1/0.000500 udp=0/0 drops=0",
	}
	if !slices.Equal(got, want) {
		t.Errorf("edges:\ngot  %q\nwant %q", got, want)
	}
	// A column of the wrong length cannot reach the engine (the decoder
	// refuses it), but an empty one means all zero.
	if err := e.Apply(s, &Batch{Sequence: 3, Stats: statsOf(stat{handle: 1, sent: 1, segsSent: 1})}); err != nil {
		t.Fatal(err)
	}
}

// TestFailedConnects: a refused connect counts on the client's edge to the
// server's address, with the server's RST back; a timeout counts as a SYN
// timeout with its SYN retransmissions; an unknown process handle refuses
// the batch.
func TestFailedConnects(t *testing.T) {
	e, _ := newTestEngine(t, false)
	s := openSession(t, e, "node-a", 1)
	ap := func(l, r string) (netip.AddrPort, netip.AddrPort) {
		return netip.MustParseAddrPort(l), netip.MustParseAddrPort(r)
	}
	l1, r1 := ap("10.0.0.1:40000", "192.0.2.7:443")
	l2, r2 := ap("10.0.0.1:40001", "192.0.2.7:443")
	b := &Batch{Sequence: 1, Processes: []Process{{Handle: 1, PID: 10, Comm: "curl"}},
		Failed: []FailedConnect{
			{Process: 1, Local: l1, Remote: r1, Reason: ConnectRefused},
			{Process: 1, Local: l2, Remote: r2, Reason: ConnectTimeout, SynRetransmits: 2},
		},
		Forgotten: []uint32{1},
	}
	if err := e.Apply(s, b); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"192.0.2.7 -> curl retrans=0 resets=1 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=0/0 drops=0",
		"curl -> 192.0.2.7 retrans=2 resets=0 syn_timeouts=1 refused=1 rtt=0/0.000000 udp=0/0 drops=0",
	}
	if got := healthLines(e); !slices.Equal(got, want) {
		t.Errorf("edges:\ngot  %q\nwant %q", got, want)
	}
	err := e.Apply(s, &Batch{Sequence: 2, Failed: []FailedConnect{{Process: 9, Local: l1, Remote: r1, Reason: ConnectRefused}}})
	if err == nil {
		t.Fatal("a failed connect of an unknown process was accepted")
	}
}

// TestUDPCounting: sent views count from the sender; a received view counts
// only from a sender no collector reports; drops count toward the receiver;
// the other peers are "other".
func TestUDPCounting(t *testing.T) {
	e, clk := newTestEngine(t, false)
	clk.advance(time.Hour) // past the first join window
	s := openSession(t, e, "node-a", 1)
	ap := netip.MustParseAddrPort
	b := &Batch{Sequence: 1, Processes: []Process{{Handle: 1, PID: 10, Comm: "dnsd"}},
		UDP: []UDPFlow{
			// A server answers an outside client, which it received from.
			{Process: 1, Local: ap("10.0.0.1:53"), Remote: ap("192.0.2.9:5000"), BytesSent: 90, DatagramsSent: 1, BytesReceived: 40, DatagramsReceived: 1, Drops: 2},
			// A local client's query that the collector saw sent: covered.
			{Process: 1, Local: ap("10.0.0.1:53"), Remote: ap("10.0.0.3:6000"), BytesReceived: 40, DatagramsReceived: 1, PeerLocal: true},
			// Beyond the cap.
			{Process: 1, Local: ap("10.0.0.1:53"), BytesSent: 30, DatagramsSent: 3, BytesReceived: 10, DatagramsReceived: 1},
		},
	}
	if err := e.Apply(s, b); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"192.0.2.9 -> dnsd retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=40/1 drops=2",
		"dnsd -> 192.0.2.9 retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=90/1 drops=0",
		"dnsd -> other retrans=0 resets=0 syn_timeouts=0 refused=0 rtt=0/0.000000 udp=30/3 drops=0",
	}
	if got := healthLines(e); !slices.Equal(got, want) {
		t.Errorf("edges:\ngot  %q\nwant %q", got, want)
	}
}
