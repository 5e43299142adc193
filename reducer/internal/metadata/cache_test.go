package metadata

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// table is a sink that keeps what was put, by rank, like the resolver.
type table struct {
	mu sync.Mutex
	m  map[resolve.Key]map[resolve.Rank]aggregate.Workload
}

type rankSink struct {
	t    *table
	rank resolve.Rank
}

func (s rankSink) Put(k resolve.Key, w aggregate.Workload) {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	if s.t.m[k] == nil {
		s.t.m[k] = map[resolve.Rank]aggregate.Workload{}
	}
	s.t.m[k][s.rank] = w
}

func (s rankSink) Delete(k resolve.Key) {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	delete(s.t.m[k], s.rank)
	if len(s.t.m[k]) == 0 {
		delete(s.t.m, k)
	}
}

func (t *table) Metadata(r resolve.Rank) resolve.Sink { return rankSink{t, r} }

// get returns the winning workload of k.
func (t *table) get(k resolve.Key) (aggregate.Workload, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range []resolve.Rank{resolve.RankPod, resolve.RankService, resolve.RankNode} {
		if w, ok := t.m[k][r]; ok {
			return w, true
		}
	}
	return aggregate.Workload{}, false
}

func podD(uid, name, ns, node, kind, wl string, created int64, ips ...string) *metadatav1.Delta {
	return &metadatav1.Delta{Object: &metadatav1.Delta_Pod{Pod: &metadatav1.Pod{Uid: uid, Name: name, Namespace: ns, Node: node,
		Ips: ips, Phase: metadatav1.PodPhase_POD_PHASE_RUNNING, Workload: &metadatav1.Workload{Kind: kind, Name: wl},
		CreationTimeUnixNano: created}}}
}

func delD(kind metadatav1.ObjectKind, id string) *metadatav1.Delta {
	return &metadatav1.Delta{Object: &metadatav1.Delta_Deleted{Deleted: &metadatav1.Deleted{Kind: kind, Id: id}}}
}

func TestCacheResolvesAndReusesIPs(t *testing.T) {
	tb := &table{m: map[resolve.Key]map[resolve.Rank]aggregate.Workload{}}
	c := NewCache(SinksOf(tb))
	ip := netip.MustParseAddr("198.18.0.10")
	want := func(step string, k resolve.Key, w aggregate.Workload, ok bool) {
		t.Helper()
		got, has := tb.get(k)
		if has != ok || got != w {
			t.Fatalf("%s: %v = %+v %v, want %+v %v", step, k, got, has, w, ok)
		}
	}
	c.Apply(&metadatav1.Delta{Object: &metadatav1.Delta_Node{Node: &metadatav1.Node{Name: "n1", InternalIps: []string{"198.18.0.1"}, Zone: "z1"}}})
	c.Apply(podD("a", "checkout-1", "shop", "n1", "deployment", "checkout", 1, "198.18.0.10", "2001:2::10"))
	checkout := aggregate.Workload{Name: "checkout", Kind: "deployment", Namespace: "shop", Zone: "z1", Node: "n1", Pod: "checkout-1"}
	want("create", resolve.IPKey(ip), checkout, true)
	want("create local", resolve.LocalIPKey(ip), checkout, true)
	want("create v6", resolve.IPKey(netip.MustParseAddr("2001:2::10")), checkout, true)
	want("create uid", resolve.PodKey("a"), checkout, true)
	want("node", resolve.IPKey(netip.MustParseAddr("198.18.0.1")), aggregate.Workload{Name: "n1", Kind: "node", Zone: "z1", Node: "n1"}, true)

	// The zone moves with the node.
	c.Apply(&metadatav1.Delta{Object: &metadatav1.Delta_Node{Node: &metadatav1.Node{Name: "n1", InternalIps: []string{"198.18.0.1"}, Zone: "z2"}}})
	checkout.Zone = "z2"
	want("zone", resolve.IPKey(ip), checkout, true)

	// A new pod gets the address while the old one's deletion is on its
	// way: the address is the newer pod's, and the old pod's deletion
	// does not take it back.
	c.Apply(podD("b", "cart-1", "store", "n1", "deployment", "cart", 2, "198.18.0.10"))
	cart := aggregate.Workload{Name: "cart", Kind: "deployment", Namespace: "store", Zone: "z2", Node: "n1", Pod: "cart-1"}
	want("reuse", resolve.IPKey(ip), cart, true)
	c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_POD, "a"))
	want("old deleted", resolve.IPKey(ip), cart, true)
	want("old uid deleted", resolve.PodKey("a"), aggregate.Workload{}, false)
	// A pod whose deletion time passed lets its address go.
	d := podD("b", "cart-1", "store", "n1", "deployment", "cart", 2, "198.18.0.10")
	d.GetPod().DeletionTimeUnixNano = time.Now().Add(-time.Second).UnixNano()
	c.Apply(d)
	want("terminated", resolve.IPKey(ip), aggregate.Workload{}, false)
	c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_POD, "b"))

	// Services by ClusterIP, v4 and v6.
	c.Apply(&metadatav1.Delta{Object: &metadatav1.Delta_Service{Service: &metadatav1.Service{Uid: "s", Name: "checkout", Namespace: "shop", ClusterIps: []string{"198.19.0.10", "2001:2:1::10"}}}})
	svc := aggregate.Workload{Name: "checkout", Kind: "service", Namespace: "shop"}
	want("service", resolve.IPKey(netip.MustParseAddr("198.19.0.10")), svc, true)
	want("service v6", resolve.IPKey(netip.MustParseAddr("2001:2:1::10")), svc, true)

	// A snapshot that names only the node sweeps the rest.
	if n := c.Sweep(map[ID]struct{}{{metadatav1.ObjectKind_OBJECT_KIND_NODE, "n1"}: {}}); n != 1 {
		t.Fatalf("swept %d, want 1 (the service)", n)
	}
	want("swept", resolve.IPKey(netip.MustParseAddr("198.19.0.10")), aggregate.Workload{}, false)
	c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_NODE, "n1"))
	if p, s, n := c.Counts(); p+s+n != 0 || len(tb.m) != 0 {
		t.Fatalf("left %d pods %d services %d nodes, table %v", p, s, n, tb.m)
	}
}

// TestResolverNamesLocalEndsByPod checks the resolver's pod keys for local
// ends: the pod UID of the cgroup path, else the pod IP.
func TestResolverNamesLocalEndsByPod(t *testing.T) {
	r := resolve.New[int]()
	c := NewCache(Sinks{Pod: r.Sink(resolve.RankPod), Service: r.Sink(resolve.RankService), Node: r.Sink(resolve.RankNode)})
	c.Apply(podD("a", "checkout-1", "shop", "n1", "deployment", "checkout", 1, "198.18.0.10"))
	var u resolve.Uses
	got := r.Resolve(1, &u, 0, resolve.Endpoint{Addr: netip.MustParseAddr("198.18.0.10"), Local: true, Node: "n1", Netns: 4, Known: true, Comm: "app"})
	if got.Name != "checkout" || got.Kind != "deployment" {
		t.Fatalf("local end by pod IP = %+v", got)
	}
	got = r.Resolve(2, &u, 0, resolve.Endpoint{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Node: "n1", Netns: 4, Known: true, Comm: "app", PodUID: "a"})
	if got.Name != "checkout" || got.Pod != "checkout-1" {
		t.Fatalf("local end by pod UID = %+v", got)
	}
	got = r.Resolve(3, &u, 1, resolve.Endpoint{Addr: netip.MustParseAddr("198.18.0.10")})
	if got.Name != "checkout" {
		t.Fatalf("remote end by pod IP = %+v", got)
	}
}
