package sockets

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/probe"
)

// TestHealthDeltas: retransmits and resets move like the other counters,
// and each delta carries the RTT last read.
func TestHealthDeltas(t *testing.T) {
	tab, _ := newTable(t, nil)
	ep := endpoint(1, probe.RoleClient, 40000)
	c := probe.Counters{BytesAcked: 100, Retransmits: 2, SRTT: 150 * time.Microsecond}
	if err := tab.Poll(samples{{Endpoint: ep, Owner: curl, Counters: c}}); err != nil {
		t.Fatal(err)
	}
	var ch Changes
	tab.Drain(&ch)
	if len(ch.Deltas) != 1 || ch.Deltas[0].Retransmits != 2 || ch.Deltas[0].SRTT != 150*time.Microsecond {
		t.Fatalf("first drain: %+v", ch.Deltas)
	}
	c.Retransmits = 7
	c.ResetsRecv = 1
	c.BytesAcked = 150
	c.SRTT = 300 * time.Microsecond
	if err := tab.Poll(samples{{Endpoint: ep, Owner: curl, Counters: c}}); err != nil {
		t.Fatal(err)
	}
	tab.Drain(&ch)
	want := Delta{Cookie: 1, BytesSent: 50, Retransmits: 5, ResetsReceived: 1, SRTT: 300 * time.Microsecond}
	if len(ch.Deltas) != 1 || ch.Deltas[0] != want {
		t.Fatalf("second drain: %+v, want %+v", ch.Deltas, want)
	}
}

// TestFailedConnects: a failed connect is reported once with its reason
// and owner; past MaxFailed awaiting report they are dropped and counted.
func TestFailedConnects(t *testing.T) {
	tab, _ := newTable(t, func(c *Config) { c.MaxFailed = 2 })
	for i := range 3 {
		tab.Apply(probe.Event{Kind: probe.EventFailed, Endpoint: endpoint(uint64(10+i), probe.RoleClient, 40000), Owner: curl,
			Reason: probe.FailTimeout, Counters: probe.Counters{Retransmits: 1}})
	}
	var ch Changes
	tab.Drain(&ch)
	if len(ch.Failed) != 2 || ch.Failed[0].Reason != probe.FailTimeout || ch.Failed[0].SynRetransmits != 1 || ch.Failed[0].Owner != curl {
		t.Fatalf("failed: %+v", ch.Failed)
	}
	if ch.Loss.FailedDropped != 1 {
		t.Errorf("failed dropped %d, want 1", ch.Loss.FailedDropped)
	}
	if len(ch.Opened) != 0 || len(ch.Deltas) != 0 {
		t.Errorf("a failed connect is no socket: %+v", ch)
	}
	tab.Drain(&ch)
	if len(ch.Failed) != 0 {
		t.Errorf("failed connects reported twice: %+v", ch.Failed)
	}
}

// TestResetAfterClose: a RST the kernel sends just after the close event
// counts on the closed socket while it awaits its report, and only its
// reset counters are taken; after the report it is counted as unreported.
func TestResetAfterClose(t *testing.T) {
	tab, _ := newTable(t, nil)
	ep := endpoint(1, probe.RoleClient, 40000)
	final := probe.Counters{BytesAcked: 100, BytesReceived: 10}
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: ep, Owner: curl, Counters: final})
	after := final
	after.BytesAcked++ // read after the close: the FIN, which is not payload
	after.ResetsSent = 1
	tab.Apply(probe.Event{Kind: probe.EventReset, Endpoint: ep, Owner: curl, Counters: after})
	var ch Changes
	tab.Drain(&ch)
	if len(ch.Deltas) != 1 || ch.Deltas[0].ResetsSent != 1 || ch.Deltas[0].BytesSent != 100 {
		t.Fatalf("deltas %+v, want 100 bytes and one reset sent", ch.Deltas)
	}
	tab.Apply(probe.Event{Kind: probe.EventReset, Endpoint: ep, Owner: curl, Counters: after})
	tab.Drain(&ch)
	if len(ch.Deltas) != 0 || ch.Loss.ResetsUnreported != 1 {
		t.Fatalf("late reset: deltas %+v, loss %+v", ch.Deltas, ch.Loss)
	}
}

// udpSamples is a UDPSampler over fixed records.
type udpSamples []probe.UDPRecord

func (us udpSamples) SampleUDP(fn func(probe.UDPRecord)) (bool, error) {
	for _, r := range us {
		fn(r)
	}
	return true, nil
}

// both is a Sampler of TCP and UDP.
type both struct {
	samples
	udpSamples
}

func newUDP(t *testing.T, maxFlows int) (*Table, *UDP) {
	t.Helper()
	u, err := NewUDP(maxFlows, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tab, _ := newTable(t, func(c *Config) { c.UDP = u })
	return tab, u
}

var (
	anyAddr = netip.AddrPortFrom(netip.IPv6Unspecified(), 5353)
	server  = netip.MustParseAddrPort("10.0.0.2:53")
	client  = netip.MustParseAddrPort("10.0.0.1:5353")
)

// TestUDPDeltas: samples move the deltas, the close record gives the final
// counters and ends the remote, the other peers slot counts the fold, and
// a received view from a socket of the node is marked covered.
func TestUDPDeltas(t *testing.T) {
	tab, u := newUDP(t, 100)
	// A client bound to any address sends to a server of the node, which
	// answers.
	cli := probe.UDPRecord{Cookie: 1, Local: anyAddr, Remote: server, NetNS: netns, Owner: curl,
		BytesSent: 100, DatagramsSent: 2, BytesReceived: 40, DatagramsReceived: 1}
	srv := probe.UDPRecord{Cookie: 2, Local: server, Remote: client, NetNS: netns, Owner: nginx,
		BytesReceived: 100, DatagramsReceived: 2, BytesSent: 40, DatagramsSent: 1}
	other := probe.UDPRecord{Cookie: 1, Slot: 16, Other: true, Local: anyAddr, NetNS: netns, Owner: curl,
		BytesSent: 30, DatagramsSent: 3, Folded: 3}
	if err := tab.Poll(both{nil, udpSamples{cli, srv, other}}); err != nil {
		t.Fatal(err)
	}
	var ch Changes
	tab.Drain(&ch)
	byCookie := map[[2]uint64]UDPDelta{}
	for _, d := range ch.UDP {
		k := [2]uint64{d.Cookie, 0}
		if !d.Remote.IsValid() {
			k[1] = 1
		}
		byCookie[k] = d
	}
	if d := byCookie[[2]uint64{1, 0}]; d.BytesSent != 100 || d.DatagramsReceived != 1 || !d.PeerLocal || d.Remote != server {
		t.Errorf("client: %+v", d)
	}
	if d := byCookie[[2]uint64{2, 0}]; d.BytesReceived != 100 || !d.PeerLocal || d.Owner != nginx {
		t.Errorf("server: %+v", d)
	}
	if d := byCookie[[2]uint64{1, 1}]; d.DatagramsSent != 3 || d.PeerLocal {
		t.Errorf("other peers: %+v", d)
	}
	if ch.Loss.UDP.PeerCap != 3 {
		t.Errorf("peer cap loss %d, want 3", ch.Loss.UDP.PeerCap)
	}
	// The client closes after one more datagram.
	cli.Kind, cli.BytesSent, cli.DatagramsSent = probe.UDPClose, 150, 3
	u.Apply(cli)
	tab.Drain(&ch)
	if len(ch.UDP) != 1 || ch.UDP[0].BytesSent != 50 || !ch.UDP[0].Closed {
		t.Fatalf("after the close: %+v", ch.UDP)
	}
	if u.Len() != 2 {
		t.Errorf("%d remotes tracked, want 2", u.Len())
	}
	// A sample taken before the close and applied after it counts nothing.
	if err := tab.Poll(both{nil, udpSamples{srv, other}}); err != nil {
		t.Fatal(err)
	}
	tab.Drain(&ch)
	if len(ch.UDP) != 0 {
		t.Errorf("nothing moved, yet %+v", ch.UDP)
	}
}

// TestUDPCapAndVanish: remotes past the table's cap are counted once each,
// and a remote that two complete polls miss is closed.
func TestUDPCapAndVanish(t *testing.T) {
	tab, u := newUDP(t, 1)
	a := probe.UDPRecord{Cookie: 1, Local: client, Remote: server, BytesSent: 1, DatagramsSent: 1}
	b := probe.UDPRecord{Cookie: 2, Local: client, Remote: server, BytesSent: 1, DatagramsSent: 1}
	for range 3 {
		if err := tab.Poll(both{nil, udpSamples{a, b}}); err != nil {
			t.Fatal(err)
		}
	}
	var ch Changes
	tab.Drain(&ch)
	if ch.Loss.UDP.FlowsDropped != 1 || len(ch.UDP) != 1 {
		t.Fatalf("loss %+v, deltas %+v", ch.Loss.UDP, ch.UDP)
	}
	for range 2 {
		if err := tab.Poll(both{nil, nil}); err != nil {
			t.Fatal(err)
		}
	}
	tab.Drain(&ch)
	if len(ch.UDP) != 1 || !ch.UDP[0].Closed || u.Len() != 0 {
		t.Fatalf("vanished: %+v, %d left", ch.UDP, u.Len())
	}
}

// TestNoRTT: with NoRTT, deltas carry no RTT.
func TestNoRTT(t *testing.T) {
	tab, _ := newTable(t, func(c *Config) { c.NoRTT = true })
	c := probe.Counters{BytesAcked: 100, SRTT: 150 * time.Microsecond}
	if err := tab.Poll(samples{{Endpoint: endpoint(1, probe.RoleClient, 40000), Owner: curl, Counters: c}}); err != nil {
		t.Fatal(err)
	}
	var ch Changes
	tab.Drain(&ch)
	if len(ch.Deltas) != 1 || ch.Deltas[0].SRTT != 0 || ch.Deltas[0].BytesSent != 100 {
		t.Fatalf("deltas %+v", ch.Deltas)
	}
}

// TestUDPNetNS: with --netns, the UDP records of other namespaces, sampled
// or closing, are ignored and counted.
func TestUDPNetNS(t *testing.T) {
	u, err := NewUDP(100, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tab, reg := newTable(t, func(c *Config) { c.UDP = u; c.NetNS = map[uint32]struct{}{netns: {}} })
	ours := probe.UDPRecord{Cookie: 1, Local: anyAddr, Remote: server, NetNS: netns, Owner: curl, BytesSent: 100, DatagramsSent: 2}
	theirs := probe.UDPRecord{Cookie: 2, Local: anyAddr, Remote: server, NetNS: netns + 1, Owner: curl, BytesSent: 70, DatagramsSent: 1}
	if err := tab.Poll(both{nil, udpSamples{ours, theirs}}); err != nil {
		t.Fatal(err)
	}
	theirs.Kind = probe.UDPClose
	u.Apply(theirs)
	var ch Changes
	tab.Drain(&ch)
	if len(ch.UDP) != 1 || ch.UDP[0].Cookie != 1 || u.Len() != 1 {
		t.Errorf("deltas %+v (%d remotes), want socket 1's only", ch.UDP, u.Len())
	}
	if got := metricValue(t, reg, "weir_collector_netns_ignored_total"); got != 2 {
		t.Errorf("%v records ignored, want 2", got)
	}
}

// TestResetAfterManyCloses: a reset found past the last recentCloses
// closes: a socket that walks saw open is found among the closing ones; a
// socket first seen at its close is looked for only in the queue's tail,
// and a reset that far behind its close is counted as unreported.
func TestResetAfterManyCloses(t *testing.T) {
	tab, _ := newTable(t, nil)
	final := probe.Counters{BytesAcked: 100, BytesReceived: 10}
	sampled := endpoint(1, probe.RoleClient, 40000)
	if err := tab.Poll(partial{probe.Sample{Endpoint: sampled, Owner: curl}}); err != nil {
		t.Fatal(err)
	}
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: sampled, Owner: curl, Counters: final})
	brief := endpoint(2, probe.RoleClient, 40001)
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: brief, Owner: curl, Counters: final})
	for i := range recentCloses {
		tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: endpoint(uint64(10+i), probe.RoleClient, uint16(41000+i)), Owner: curl, Counters: final})
	}
	reset := final
	reset.ResetsSent = 1
	tab.Apply(probe.Event{Kind: probe.EventReset, Endpoint: sampled, Owner: curl, Counters: reset})
	tab.Apply(probe.Event{Kind: probe.EventReset, Endpoint: brief, Owner: curl, Counters: reset})
	var ch Changes
	tab.Drain(&ch)
	resets := map[uint64]uint64{}
	for _, d := range ch.Deltas {
		resets[d.Cookie] += d.ResetsSent
	}
	if resets[1] != 1 || resets[2] != 0 || ch.Loss.ResetsUnreported != 1 {
		t.Fatalf("resets %v, unreported %d: want socket 1's counted and socket 2's unreported", resets, ch.Loss.ResetsUnreported)
	}
}
