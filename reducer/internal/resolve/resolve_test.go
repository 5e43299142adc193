package resolve

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	web     = aggregate.Workload{Name: "web", Kind: "deployment", Namespace: "shop"}
	webSvc  = aggregate.Workload{Name: "web", Kind: "service", Namespace: "shop"}
	podA    = netip.MustParseAddr("10.1.0.7")
	nodeA   = "node-a"
	curlEnd = Endpoint{Addr: netip.MustParseAddr("10.0.0.1"), Local: true, Node: nodeA, Netns: 1, Known: true, Comm: "curl", CgroupID: 42}
)

func TestResolve(t *testing.T) {
	inContainer := curlEnd
	inContainer.Container = "0123456789ab"

	tests := []struct {
		name string
		put  func(r *Resolver[int])
		ep   Endpoint
		want aggregate.Workload
	}{
		{name: "remote without metadata is external", ep: Endpoint{Addr: podA},
			want: aggregate.Workload{Name: "10.1.0.7", Kind: KindExternal}},
		{name: "IPv4-mapped remote is its IPv4 address", ep: Endpoint{Addr: netip.MustParseAddr("::ffff:10.1.0.7")},
			put: func(r *Resolver[int]) { r.Sink(RankPod).Put(IPKey(podA), web) }, want: web},
		{name: "remote by IP", ep: Endpoint{Addr: podA},
			put: func(r *Resolver[int]) { r.Sink(RankPod).Put(IPKey(podA), web) }, want: web},
		{name: "a pod beats a DNS name", ep: Endpoint{Addr: podA},
			put: func(r *Resolver[int]) {
				r.Sink(RankDNS).Put(IPKey(podA), aggregate.Workload{Name: "web.example", Kind: "dns"})
				r.Sink(RankPod).Put(IPKey(podA), web)
			}, want: web},
		{name: "local process", ep: curlEnd, want: aggregate.Workload{Name: "curl", Kind: KindProcess, Node: nodeA, Process: "curl"}},
		{name: "local, owner unknown", ep: Endpoint{Addr: podA, Local: true, Node: nodeA},
			want: aggregate.Workload{Name: "unknown", Kind: KindProcess, Node: nodeA}},
		{name: "local, empty comm", ep: Endpoint{Addr: podA, Local: true, Node: nodeA, Known: true},
			want: aggregate.Workload{Name: "unknown", Kind: KindProcess, Node: nodeA}},
		{name: "local by cgroup", ep: curlEnd,
			put:  func(r *Resolver[int]) { r.Sink(RankPod).Put(CgroupKey(nodeA, 42), web) },
			want: aggregate.Workload{Name: "web", Kind: "deployment", Namespace: "shop", Node: nodeA, Process: "curl"}},
		{name: "local by netns", ep: curlEnd,
			put:  func(r *Resolver[int]) { r.Sink(RankPod).Put(NetnsKey(nodeA, 1), web) },
			want: aggregate.Workload{Name: "web", Kind: "deployment", Namespace: "shop", Node: nodeA, Process: "curl"}},
		{name: "cgroup of another node", ep: curlEnd,
			put:  func(r *Resolver[int]) { r.Sink(RankPod).Put(CgroupKey("node-b", 42), web) },
			want: aggregate.Workload{Name: "curl", Kind: KindProcess, Node: nodeA, Process: "curl"}},
		{name: "a local end ignores its IP", ep: curlEnd,
			put: func(r *Resolver[int]) {
				r.Sink(RankNode).Put(IPKey(curlEnd.Addr), aggregate.Workload{Name: "n", Kind: "node"})
			},
			want: aggregate.Workload{Name: "curl", Kind: KindProcess, Node: nodeA, Process: "curl"}},
		{name: "local in a container", ep: inContainer,
			want: aggregate.Workload{Name: "0123456789ab", Kind: KindContainer, Node: nodeA, Process: "curl"}},
		{name: "a pod by netns beats the container", ep: inContainer,
			put:  func(r *Resolver[int]) { r.Sink(RankPod).Put(NetnsKey(nodeA, 1), web) },
			want: aggregate.Workload{Name: "web", Kind: "deployment", Namespace: "shop", Node: nodeA, Process: "curl"}},
		{name: "container of an unknown owner is not used", ep: Endpoint{Addr: podA, Local: true, Node: nodeA, Container: "0123456789ab"},
			want: aggregate.Workload{Name: "unknown", Kind: KindProcess, Node: nodeA}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New[int]()
			if tc.put != nil {
				tc.put(r)
			}
			var u Uses
			if got := r.Resolve(1, &u, 0, tc.ep); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if got := r.Lookup(tc.ep); got != tc.want {
				t.Errorf("Lookup: got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// changed returns the flows that Changed reports, sorted.
func changed(r *Resolver[int]) []int {
	var out []int
	r.Changed(func(f int) { out = append(out, f) })
	slices.Sort(out)
	return out
}

func TestReverseIndexes(t *testing.T) {
	r := New[int]()
	pods := r.Sink(RankPod)
	dns := r.Sink(RankDNS)
	uses := map[int]*Uses{1: {}, 2: {}, 3: {}}
	// Flow 1: curl to podA. Flow 2: curl to another address. Flow 3: a
	// loopback flow whose two ends share the netns.
	r.Resolve(1, uses[1], 0, curlEnd)
	r.Resolve(1, uses[1], 1, Endpoint{Addr: podA})
	r.Resolve(2, uses[2], 0, curlEnd)
	r.Resolve(2, uses[2], 1, Endpoint{Addr: netip.MustParseAddr("192.0.2.1")})
	lo := Endpoint{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Node: nodeA, Netns: 9}
	r.Resolve(3, uses[3], 0, lo)
	r.Resolve(3, uses[3], 1, lo)

	if got := changed(r); got != nil {
		t.Fatalf("changed before any metadata: %v", got)
	}
	pods.Put(IPKey(podA), web)
	if got := changed(r); !slices.Equal(got, []int{1}) {
		t.Errorf("pod IP named: changed %v, want [1]", got)
	}
	if got := changed(r); got != nil {
		t.Errorf("changes reported twice: %v", got)
	}
	// The same name again, or a losing source, changes nothing.
	pods.Put(IPKey(podA), web)
	dns.Put(IPKey(podA), aggregate.Workload{Name: "web.example", Kind: "dns"})
	if got := changed(r); got != nil {
		t.Errorf("no new winner: changed %v", got)
	}
	// A key no flow uses changes nothing either.
	pods.Put(IPKey(netip.MustParseAddr("10.9.9.9")), web)
	if got := changed(r); got != nil {
		t.Errorf("unused key: changed %v", got)
	}
	// The pod goes: the DNS name takes over.
	pods.Delete(IPKey(podA))
	if got := changed(r); !slices.Equal(got, []int{1}) {
		t.Errorf("pod deleted: changed %v, want [1]", got)
	}
	// The cgroup of curl touches both of its flows.
	pods.Put(CgroupKey(nodeA, 42), webSvc)
	if got := changed(r); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("cgroup named: changed %v, want [1 2]", got)
	}
	// Re-resolving end 0 of flow 3 to another netns keeps end 1's use of
	// the shared one.
	lo2 := lo
	lo2.Netns = 10
	r.Resolve(3, uses[3], 0, lo2)
	pods.Put(NetnsKey(nodeA, 9), web)
	if got := changed(r); !slices.Equal(got, []int{3}) {
		t.Errorf("netns shared by the other end: changed %v, want [3]", got)
	}
	// Forgotten flows leave every index.
	for f, u := range uses {
		r.Forget(f, u)
	}
	if _, indexed := r.Len(); indexed != 0 {
		t.Errorf("%d keys still indexed after every flow was forgotten", indexed)
	}
	pods.Put(CgroupKey(nodeA, 42), web)
	if got := changed(r); got != nil {
		t.Errorf("forgotten flows changed: %v", got)
	}
}

func TestSourceRunsConcurrently(t *testing.T) {
	r := New[int]()
	var u Uses
	r.Resolve(1, &u, 1, Endpoint{Addr: podA})
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	done := make(chan error)
	src := SourceFunc(func(ctx context.Context, sink Sink) error {
		sink.Put(IPKey(podA), web)
		close(started)
		for i := 0; ctx.Err() == nil; i++ {
			sink.Put(IPKey(podA), aggregate.Workload{Name: "web", Kind: "pod", Pod: string(rune('a' + i%26))})
		}
		return nil
	})
	go func() { done <- src.Run(ctx, r.Sink(RankPod)) }()
	<-started
	seen := false
	for range 1000 {
		r.Changed(func(int) { seen = true })
		r.Resolve(1, &u, 1, Endpoint{Addr: podA})
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Error("a running source's changes never showed")
	}
}

// TestKeySetPositions resolves and forgets the ends of many flows through
// a few shared key sets in a random order, and checks after each step that
// every flow end is listed in its set exactly where its Uses says, that
// every listed end is one, and that nothing stays once every flow is gone.
func TestKeySetPositions(t *testing.T) {
	r := New[int]()
	rng := rand.New(rand.NewPCG(1, 2))
	eps := []Endpoint{
		curlEnd,
		{Addr: podA},
		{Addr: netip.MustParseAddr("192.0.2.1")},
		{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Node: nodeA, Netns: 9},
		{Addr: netip.MustParseAddr("10.0.0.2"), Local: true, Node: "node-b", Netns: 3, Known: true, Comm: "web", CgroupID: 7, PodUID: "uid-1"},
	}
	uses := make(map[int]*Uses)
	check := func(step int) {
		t.Helper()
		listed := 0
		for sid := 1; sid < len(r.sets); sid++ {
			for p, f := range r.sets[sid].flows {
				u := uses[f]
				at0 := u != nil && u.set[0] == setID(sid) && u.pos[0] == uint32(p)
				at1 := u != nil && u.set[1] == setID(sid) && u.pos[1] == uint32(p)
				if !at0 && !at1 {
					t.Fatalf("step %d: set %d lists flow %d at %d, its uses %+v", step, sid, f, p, u)
				}
				listed++
			}
		}
		ends := 0
		for f, u := range uses {
			for i := range u.set {
				if u.set[i] == 0 {
					continue
				}
				ends++
				if fl := r.sets[u.set[i]].flows; int(u.pos[i]) >= len(fl) || fl[u.pos[i]] != f {
					t.Fatalf("step %d: end %d of flow %d not at %d of set %d", step, i, f, u.pos[i], u.set[i])
				}
			}
		}
		if listed != ends {
			t.Fatalf("step %d: %d ends listed, %d ends resolved", step, listed, ends)
		}
		if len(r.setIDs) != len(r.sets)-1-len(r.freeSet) {
			t.Fatalf("step %d: %d sets interned, %d slots in use", step, len(r.setIDs), len(r.sets)-1-len(r.freeSet))
		}
	}
	for step := range 20000 {
		f := rng.IntN(64)
		switch rng.IntN(4) {
		case 0:
			if u := uses[f]; u != nil {
				r.Forget(f, u)
				delete(uses, f)
			}
		default:
			u := uses[f]
			if u == nil {
				u = &Uses{}
				uses[f] = u
			}
			r.Resolve(f, u, rng.IntN(2), eps[rng.IntN(len(eps))])
		}
		check(step)
	}
	for f, u := range uses {
		r.Forget(f, u)
	}
	if _, indexed := r.Len(); indexed != 0 || len(r.setIDs) != 0 {
		t.Errorf("%d keys and %d sets still indexed after every flow was forgotten", indexed, len(r.setIDs))
	}
}

// TestRecentSetsNeverStale: a key set found among the recent ones is
// compared by its keys, so a set dropped and made again for other keys is
// not taken for the old one.
func TestRecentSetsNeverStale(t *testing.T) {
	r := New[int]()
	a := Endpoint{Local: true, Node: "n1", Netns: 1, Known: true, Comm: "a", CgroupID: 10}
	b := Endpoint{Local: true, Node: "n1", Netns: 2, Known: true, Comm: "b", CgroupID: 20}
	var u1, u2, u3 Uses
	r.Resolve(1, &u1, 0, a)
	first := u1.set[0]
	r.Forget(1, &u1) // the set of a goes; its id is free
	r.Resolve(2, &u2, 0, b)
	if u2.set[0] != first {
		t.Fatalf("b's set is %d, want the freed id %d reused", u2.set[0], first)
	}
	r.Resolve(3, &u3, 0, a)
	if u3.set[0] == u2.set[0] {
		t.Fatal("a resolved into b's set, which reused the id of a's old one")
	}
	keys, n := keysOf(a)
	if !r.same(&r.sets[u3.set[0]], keys[:n]) {
		t.Fatal("a's set does not hold a's keys")
	}
	// And again through the recent sets: a fourth flow of a shares a's set.
	var u4 Uses
	r.Resolve(4, &u4, 0, a)
	if u4.set[0] != u3.set[0] {
		t.Fatalf("a's second flow is in set %d, want %d", u4.set[0], u3.set[0])
	}
}
