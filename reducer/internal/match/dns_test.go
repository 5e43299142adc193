package match

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// recordSink records what a source put.
type recordSink map[resolve.Key]aggregate.Workload

func (s recordSink) Put(k resolve.Key, w aggregate.Workload) { s[k] = w }
func (s recordSink) Delete(k resolve.Key)                    { delete(s, k) }

func TestDNSNames(t *testing.T) {
	sink := recordSink{}
	d := newDNSNames(sink, 2)
	t0 := time.Unix(1000, 0)
	a, b, c := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("2001:2::3")
	d.put(a, "api.example.com", t0.Add(time.Minute))
	d.put(b, "db.example.com", t0.Add(2*time.Minute))
	if sink[resolve.IPKey(a)].Name != "api.example.com" || sink[resolve.IPKey(a)].Kind != resolve.KindExternal {
		t.Fatalf("sink %v", sink)
	}
	// At the cap, the name that expires first goes.
	d.put(c, "v6.example.com", t0.Add(3*time.Minute))
	if _, ok := sink[resolve.IPKey(a)]; ok || len(sink) != 2 {
		t.Errorf("after the cap: %v", sink)
	}
	// A later answer renames and extends.
	d.put(b, "db2.example.com", t0.Add(5*time.Minute))
	d.expire(t0.Add(4 * time.Minute))
	if len(sink) != 1 || sink[resolve.IPKey(b)].Name != "db2.example.com" {
		t.Errorf("after expiry: %v", sink)
	}
	d.expire(t0.Add(6 * time.Minute))
	if len(sink) != 0 || len(d.byAddr) != 0 || len(d.queue) != 0 {
		t.Errorf("all expired: %v %v %v", sink, d.byAddr, d.queue)
	}
}

// TestApplyDNS: a node's DNS flows count on the client → server edge, and
// an answer names its address for a socket announced in the same batch,
// from its first byte; a process in a container is the container.
func TestApplyDNS(t *testing.T) {
	e, _ := newTestEngine(t, false)
	s := openSession(t, e, "node-a", 1)
	b := &Batch{
		Sequence:  1,
		Processes: []Process{{Handle: 1, PID: 10, Comm: "curl"}},
		Sockets:   []Socket{sock(1, 1, RoleClient, "198.18.0.1:40000", "198.18.7.7:443", true)},
		Stats:     statsOf(stat{handle: 1, sent: 500, segsSent: 1}),
		DNSFlows: []DNSFlow{
			{Client: netip.MustParseAddr("198.18.0.1"), Server: netip.MustParseAddrPort("198.18.0.53:53"), Comm: "curl",
				Responses: []DNSCount{{RCode: 0, Count: 2}, {RCode: 3, Count: 1}, {RCode: 99, Count: 1}}, Timeouts: 1,
				Durations: []time.Duration{time.Millisecond, 3 * time.Millisecond}},
			{Client: netip.MustParseAddr("198.18.0.1"), Server: netip.MustParseAddrPort("198.18.0.53:53"), Comm: "sh",
				ContainerID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Responses: []DNSCount{{RCode: 2, Count: 1}}},
		},
		DNSAnswers: []DNSAnswer{{Name: "api.example.com", Addrs: []netip.Addr{netip.MustParseAddr("198.18.7.7")}, TTL: time.Minute}},
	}
	e.NameDNS(b)
	if err := e.Apply(s, b); err != nil {
		t.Fatal(err)
	}
	e.ApplyDNS(s, b)
	type want struct {
		values map[aggregate.MetricID]uint64
		hist   uint64
	}
	wants := map[string]want{
		"curl/process -> api.example.com/external": {values: map[aggregate.MetricID]uint64{aggregate.TCPBytes: 500}},
		"curl/process -> 198.18.0.53/external": {values: map[aggregate.MetricID]uint64{
			aggregate.DNSResponsesNoError: 2, aggregate.DNSResponsesNXDomain: 1, aggregate.DNSResponsesOther: 1, aggregate.DNSTimeouts: 1}, hist: 2},
		"0123456789ab/container -> 198.18.0.53/external": {values: map[aggregate.MetricID]uint64{aggregate.DNSResponsesServFail: 1}},
	}
	got := map[string]bool{}
	for _, sr := range e.Snapshot(nil) {
		k := sr.Key.Src.Name + "/" + sr.Key.Src.Kind + " -> " + sr.Key.Dst.Name + "/" + sr.Key.Dst.Kind
		w, ok := wants[k]
		if !ok {
			t.Errorf("unexpected edge %s", k)
			continue
		}
		got[k] = true
		for id, v := range w.values {
			if sr.Value(id) != v {
				t.Errorf("%s: %s = %d, want %d", k, aggregate.FlowMetrics()[id].Name, sr.Value(id), v)
			}
		}
		var n uint64
		if sr.Hists != nil {
			n = sr.Hists[aggregate.DNSDuration].Count
		}
		if n != w.hist {
			t.Errorf("%s: %d durations, want %d", k, n, w.hist)
		}
	}
	for k := range wants {
		if !got[k] {
			t.Errorf("missing edge %s", k)
		}
	}
}
