package match

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

func TestEvents(t *testing.T) {
	e, _ := newTestEngine(t, true)
	a := openSession(t, e, "node-a", 1)
	all, cancelAll := e.Subscribe("all", 64)
	slow, cancelSlow := e.Subscribe("slow", 2)
	defer cancelAll()

	clientEnd := clientEnd
	clientEnd.Cookie = 0xc0
	apply(t, e, a, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd},
		Stats: statsOf(stat{1, 100, 0, 2, 0})})
	e.Metadata(resolve.RankPod).Put(resolve.IPKey(netip.MustParseAddr("10.0.0.2")), aggregate.Workload{Name: "web", Kind: "deployment"})
	apply(t, e, a, Batch{Sequence: 2, Stats: statsOf(stat{1, 5, 0, 1, 0}), Closed: []uint32{1}})

	// The traffic of an open flow is no event (DrainTraffic reads it);
	// the close carries the flow's totals.
	want := []EventKind{EventSocketOpen, EventFlowOpen, EventEdgeChange, EventSocketClose, EventFlowClose}
	for i, k := range want {
		ev := <-all
		if ev.Kind != k || ev.Seq != uint64(i+1) {
			t.Fatalf("event %d is %v (seq %d), want %v (seq %d)", i, ev.Kind, ev.Seq, k, i+1)
		}
		switch k {
		case EventSocketOpen:
			if ev.Node != "node-a" || ev.Cookie != 0xc0 || ev.Local != clientEnd.Local {
				t.Errorf("socket open %+v", ev)
			}
		case EventEdgeChange:
			if ev.Prev.Dst.Name != "10.0.0.2" || ev.Key.Dst.Name != "web" {
				t.Errorf("edge change %+v -> %+v", ev.Prev.Dst, ev.Key.Dst)
			}
		case EventFlowClose:
			if ev.Local != clientEnd.Local || ev.Remote != clientEnd.Remote || ev.Key.Src.Name != "curl" || ev.Key.Dst.Name != "web" ||
				ev.Total != [2]Counts{{105, 3}, {}} {
				t.Errorf("flow close %+v", ev)
			}
		}
	}
	select {
	case ev := <-all:
		t.Errorf("unexpected event %v", ev.Kind)
	default:
	}
	// The slow subscriber kept the first two events and lost the rest,
	// and the fast one lost nothing.
	if got := testutil.ToFloat64(e.events.lost.WithLabelValues("slow")); got != float64(len(want)-2) {
		t.Errorf("events_lost_total{subscriber=slow} = %v, want %d", got, len(want)-2)
	}
	if got := testutil.ToFloat64(e.events.lost.WithLabelValues("all")); got != 0 {
		t.Errorf("events_lost_total{subscriber=all} = %v, want 0", got)
	}
	cancelSlow()
	cancelSlow()
	n := 0
	for range slow {
		n++
	}
	if n != 2 {
		t.Errorf("slow subscriber got %d events, want 2", n)
	}
	// Without subscribers the engine builds no events.
	cancelAll()
	if e.events.active() {
		t.Error("events active without subscribers")
	}
}
