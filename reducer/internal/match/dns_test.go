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
