package match

import (
	"net/netip"
	"testing"
)

func TestDrainTraffic(t *testing.T) {
	e, _ := newTestEngine(t, true)
	a := openSession(t, e, "node-a", 1)
	b := openSession(t, e, "node-b", 1)
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	client := sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true)
	server := sock(1, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true)
	other := sock(2, 1, RoleClient, "10.0.0.1:40001", "10.0.0.2:80", true)

	// Without subscribers no flow is noted.
	apply(t, e, a, Batch{Sequence: 1, Processes: curl, Sockets: []Socket{client}, Stats: statsOf(stat{1, 100, 10, 2, 1})})
	if got, _ := e.DrainTraffic(nil, 10); len(got) != 0 {
		t.Fatalf("drained %+v without subscribers", got)
	}

	events, cancel := e.Subscribe("test", 64)
	defer cancel()
	apply(t, e, b, Batch{Sequence: 1, Processes: nginx, Sockets: []Socket{server}, Stats: statsOf(stat{1, 20, 150, 1, 3})})
	apply(t, e, a, Batch{Sequence: 2, Sockets: []Socket{other}, Stats: statsOf(stat{1, 50, 0, 1, 0}, stat{2, 7, 0, 1, 0})})
	var last uint64
	for len(events) > 0 {
		last = (<-events).Seq
	}
	got, seq := e.DrainTraffic(nil, 10)
	if seq != last || seq == 0 {
		t.Errorf("drain seq %d, want %d, the last event's", seq, last)
	}
	if len(got) != 2 {
		t.Fatalf("drained %d flows, want 2: %+v", len(got), got)
	}
	// The joined flow counts the greater of its ends' views: to the server,
	// 100 B before the subscription, then the server's 150 and the client's
	// 150; back, the client's 10 before, then the server's 20.
	f := got[0]
	if f.Ends != [2]netip.AddrPort{client.Local, client.Remote} || f.Client != 0 || f.Nodes != [2]string{"node-a", "node-b"} ||
		f.Delta != [2]Counts{{50, 1}, {10, 0}} || f.Total != [2]Counts{{150, 3}, {20, 1}} {
		t.Errorf("flow %+v", f)
	}
	if f.Edges[0] == nil || f.Edges[0].Key().Src.Name != "curl" || f.Edges[0].Key().Dst.Name != "nginx" ||
		f.Edges[1] == nil || f.Edges[1].Key().Src.Name != "nginx" {
		t.Errorf("edges %+v", f.Edges)
	}
	if g := got[1]; g.Ends[0] != other.Local || g.Delta != [2]Counts{{7, 1}, {}} || g.Total != g.Delta || g.Nodes != [2]string{"node-a", ""} {
		t.Errorf("second flow %+v", g)
	}
	// Drained once: nothing new.
	if got, _ := e.DrainTraffic(got[:0], 10); len(got) != 0 {
		t.Errorf("drained again: %+v", got)
	}

	// A limit leaves the rest for the next call, which reports what they
	// counted meanwhile.
	apply(t, e, a, Batch{Sequence: 3, Stats: statsOf(stat{1, 1, 0, 1, 0}, stat{2, 1, 0, 1, 0})})
	if got, _ = e.DrainTraffic(got[:0], 1); len(got) != 1 || got[0].Delta[0] != (Counts{1, 1}) {
		t.Errorf("limit 1: %+v", got)
	}
	apply(t, e, a, Batch{Sequence: 4, Stats: statsOf(stat{2, 3, 0, 1, 0})})
	if got, _ = e.DrainTraffic(got[:0], 1); len(got) != 1 || got[0].Ends[0] != other.Local || got[0].Delta[0] != (Counts{4, 2}) {
		t.Errorf("the rest: %+v", got)
	}

	// A flow that closes with traffic not drained is not reported: its
	// close carries its totals.
	apply(t, e, a, Batch{Sequence: 5, Stats: statsOf(stat{2, 5, 0, 1, 0}), Closed: []uint32{2}})
	var closeEv Event
	for len(events) > 0 {
		if ev := <-events; ev.Kind == EventFlowClose {
			closeEv = ev
		}
	}
	if closeEv.Local != other.Local || closeEv.Total != [2]Counts{{16, 4}, {}} || closeEv.Key.Src.Name != "curl" {
		t.Errorf("close %+v", closeEv)
	}
	if got, seq = e.DrainTraffic(got[:0], 10); len(got) != 0 || seq != closeEv.Seq {
		t.Errorf("drained %+v (seq %d) after the close (seq %d)", got, seq, closeEv.Seq)
	}

	// When the last subscriber leaves, the list is forgotten, and nothing
	// is noted until the next subscription.
	apply(t, e, a, Batch{Sequence: 6, Stats: statsOf(stat{1, 1, 0, 1, 0})})
	cancel()
	if len(e.events.marks) != 0 {
		t.Errorf("%d flows listed without subscribers", len(e.events.marks))
	}
	apply(t, e, a, Batch{Sequence: 7, Stats: statsOf(stat{1, 1, 0, 1, 0})})
	_, cancel2 := e.Subscribe("test2", 1)
	defer cancel2()
	apply(t, e, a, Batch{Sequence: 8, Stats: statsOf(stat{1, 1, 0, 1, 0})})
	if got, _ = e.DrainTraffic(got[:0], 10); len(got) != 1 || got[0].Delta[0] != (Counts{1, 1}) || got[0].Total[0] != (Counts{154, 7}) {
		t.Errorf("after a new subscription: %+v", got)
	}
}

// BenchmarkDrainTraffic reads the traffic of 10k flows that all counted
// some since the last read, as the observer does once a second: the time
// is per flow, and the engine's lock is held for all of it.
func BenchmarkDrainTraffic(b *testing.B) {
	const n = 10000
	e, _ := newTestEngine(b, true)
	nodes := [2]*Session{openSession(b, e, "node-a", 1), openSession(b, e, "node-b", 1)}
	var stats [2]Batch
	for side, s := range nodes {
		batch := Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: []string{"client", "server"}[side]}}}
		for i := range n {
			c := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(10000+i))
			sv := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), 443)
			k := Socket{Handle: uint32(i + 1), Process: 1, Role: RoleClient, Local: c, Remote: sv, NewConnection: true}
			if side == 1 {
				k = Socket{Handle: uint32(i + 1), Process: 1, Role: RoleServer, Local: sv, Remote: c, NewConnection: true}
			}
			batch.Sockets = append(batch.Sockets, k)
			st := &stats[side].Stats
			st.Handles = append(st.Handles, uint32(i+1))
			st.BytesSent = append(st.BytesSent, 100)
			st.BytesReceived = append(st.BytesReceived, 100)
			st.SegmentsSent = append(st.SegmentsSent, 1)
			st.SegmentsReceived = append(st.SegmentsReceived, 1)
		}
		if err := e.Apply(s, &batch); err != nil {
			b.Fatal(err)
		}
	}
	_, cancel := e.Subscribe("bench", 1)
	defer cancel()
	seq := uint64(1)
	dst := make([]Traffic, 0, n)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		seq++
		stats[0].Sequence = seq
		if err := e.Apply(nodes[0], &stats[0]); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		dst, _ = e.DrainTraffic(dst[:0], n)
		if len(dst) != n {
			b.Fatalf("drained %d flows, want %d", len(dst), n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}
