package encode

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/sockets"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// TestHealthColumns: the retransmit, reset and RTT columns are empty when
// no socket of the batch has one, and as long as the handles otherwise.
func TestHealthColumns(t *testing.T) {
	enc, tab, _ := newEncoder(t, nil)
	apply(t, tab, open(1, probe.RoleClient, 40001, curl, ctr(100, 0, 1, 0)))
	apply(t, tab, open(2, probe.RoleClient, 40002, curl, ctr(100, 0, 1, 0)))
	b := enc.Report(now)
	if st := b.GetStats(); len(st.GetRetransmits())+len(st.GetResetsSent())+len(st.GetResetsReceived())+len(st.GetSrttUs()) != 0 {
		t.Fatalf("columns of a batch without retransmits, resets or RTT: %v", st)
	}
	c := ctr(200, 0, 2, 0)
	c.Retransmits, c.ResetsSent, c.SRTT = 3, 1, 1500*time.Microsecond
	apply(t, tab, probe.Event{Kind: probe.EventClose, Endpoint: endpoint(2, probe.RoleClient, 40002), Owner: curl, Counters: c})
	if err := tab.Poll(partial{sample(1, curl, ctr(150, 0, 2, 0))}); err != nil {
		t.Fatal(err)
	}
	st := enc.Report(now.Add(time.Second)).GetStats()
	if !slices.Equal(st.GetRetransmits(), []uint64{0, 3}) || !slices.Equal(st.GetResetsSent(), []uint64{0, 1}) ||
		!slices.Equal(st.GetResetsReceived(), []uint64{0, 0}) || !slices.Equal(st.GetSrttUs(), []uint32{0, 1500}) {
		t.Fatalf("columns: %v", st)
	}
}

// TestFailedConnectBatch: a failed connect goes out with its process,
// announced and forgotten in the same batch when no socket holds it.
func TestFailedConnectBatch(t *testing.T) {
	enc, tab, _ := newEncoder(t, nil)
	tab.Apply(probe.Event{Kind: probe.EventFailed, Endpoint: endpoint(7, probe.RoleClient, 40007), Owner: curl,
		Reason: probe.FailRefused})
	b := enc.Report(now)
	if len(b.GetFailedConnects()) != 1 || len(b.GetProcesses()) != 1 || !slices.Equal(b.GetForgottenProcesses(), []uint32{1}) {
		t.Fatalf("batch %v", b)
	}
	f := b.GetFailedConnects()[0]
	if f.GetProcess() != 1 || f.GetReason() != ingestv1.ConnectFailure_CONNECT_FAILURE_REFUSED || f.GetRemotePort() != 80 || f.GetLocalPort() != 40007 {
		t.Errorf("failed connect %v", f)
	}
}

// udpOnly is a Sampler of UDP records only.
type udpOnly []probe.UDPRecord

func (udpOnly) SampleWalk(func(probe.Sample)) (bool, error) { return true, nil }

func (us udpOnly) SampleUDP(fn func(probe.UDPRecord)) (bool, error) {
	for _, r := range us {
		fn(r)
	}
	return true, nil
}

// TestUDPFlows: a UDP socket's process is announced with its first flow
// and held until the socket closes.
func TestUDPFlows(t *testing.T) {
	u, err := sockets.NewUDP(10, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	enc, tab, _ := newEncoder(t, func(c *sockets.Config) { c.UDP = u })
	rec := probe.UDPRecord{Cookie: 3, Local: netip.MustParseAddrPort("10.0.0.1:5353"), Remote: netip.MustParseAddrPort("10.0.0.2:53"),
		NetNS: netns, Owner: curl, BytesSent: 60, DatagramsSent: 1}
	if err := tab.Poll(udpOnly{rec}); err != nil {
		t.Fatal(err)
	}
	b := enc.Report(now)
	if len(b.GetUdpFlows()) != 1 || len(b.GetProcesses()) != 1 || len(b.GetForgottenProcesses()) != 0 {
		t.Fatalf("first batch %v", b)
	}
	if f := b.GetUdpFlows()[0]; f.GetProcess() != 1 || f.GetBytesSent() != 60 || f.GetRemotePort() != 53 || f.GetClosed() {
		t.Errorf("flow %v", f)
	}
	rec.BytesSent, rec.DatagramsSent = 120, 2
	if err := tab.Poll(udpOnly{rec}); err != nil {
		t.Fatal(err)
	}
	b = enc.Report(now.Add(time.Second))
	if len(b.GetProcesses()) != 0 || len(b.GetUdpFlows()) != 1 || b.GetUdpFlows()[0].GetProcess() != 1 {
		t.Fatalf("second batch %v", b)
	}
	rec.Kind = probe.UDPClose
	u.Apply(rec)
	b = enc.Report(now.Add(2 * time.Second))
	if len(b.GetUdpFlows()) != 1 || !b.GetUdpFlows()[0].GetClosed() || !slices.Equal(b.GetForgottenProcesses(), []uint32{1}) {
		t.Fatalf("closing batch %v", b)
	}
}
