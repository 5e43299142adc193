package match

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// newWindowEngine returns an engine that holds flows to fleet addresses
// for window.
func newWindowEngine(t testing.TB, window time.Duration) (*Engine, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, err := New(Config{
		SeriesTTL:  time.Hour,
		SessionTTL: time.Hour,
		Loopback:   true,
		JoinWindow: window,
		Now:        c.now,
	}, prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return e, c
}

func withCookie(s Socket, cookie uint64) Socket {
	s.Cookie = cookie
	return s
}

func TestJoinWindow(t *testing.T) {
	type step struct {
		node    string        // "a" runs curl (client), "b" runs nginx (server)
		after   time.Duration // clock advance before the step; 1 s when 0
		batch   Batch
		publish bool // run PublishDue instead of applying batch
	}
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	c1 := withCookie(sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true), 11)
	c2 := withCookie(sock(2, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true), 12)
	c3 := withCookie(sock(3, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true), 13)
	s1 := withCookie(sock(1, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true), 21)
	s2 := withCookie(sock(2, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true), 22)
	s3 := withCookie(sock(3, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true), 23)
	// Both namespaces on node a: nginx is process 2.
	both := []Process{{Handle: 1, Comm: "curl"}, {Handle: 2, Comm: "nginx"}}
	ls := func(s Socket, h uint32) Socket { s.Handle, s.Process, s.Netns = h, 2, 4026532000; return s }
	tests := []struct {
		name  string
		steps []step
		want  []string
	}{
		{
			name: "the peer reports late: no external edge, opened on the joined edge",
			steps: []step{
				{node: "a", batch: Batch{Processes: curl, Sockets: []Socket{c1}, Stats: statsOf(stat{1, 100, 500, 2, 3})}},
				{node: "a", batch: Batch{Stats: statsOf(stat{1, 10, 0, 1, 0})}},
				{node: "b", after: 5 * time.Second, batch: Batch{Processes: nginx, Sockets: []Socket{s1}, Stats: statsOf(stat{1, 500, 110, 3, 3})}},
			},
			want: []string{
				"curl/process -> nginx/process bytes=110 packets=3 opened=1 active=1",
				"nginx/process -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "the whole life of one end before the other's first report: each byte once",
			steps: []step{
				{node: "a", batch: Batch{Processes: curl, Sockets: []Socket{c1}, Stats: statsOf(stat{1, 7, 9, 1, 1}), Closed: []uint32{1}}},
				{node: "b", after: 8 * time.Second, batch: Batch{Processes: nginx, Sockets: []Socket{s1}, Stats: statsOf(stat{1, 9, 7, 1, 1}), Closed: []uint32{1}}},
			},
			want: []string{
				"curl/process -> nginx/process bytes=7 packets=1 opened=1 active=0",
				"nginx/process -> curl/process bytes=9 packets=1 opened=0 active=0",
			},
		},
		{
			name: "no peer within the window: one-sided, with what was held",
			steps: []step{
				{node: "a", batch: Batch{Processes: curl, Sockets: []Socket{c1}, Stats: statsOf(stat{1, 100, 0, 2, 0})}},
				{node: "a", after: 5 * time.Second, batch: Batch{Stats: statsOf(stat{1, 1, 0, 1, 0}), Closed: []uint32{1}}},
				{publish: true, after: 6 * time.Second},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=101 packets=3 opened=1 active=0",
			},
		},
		{
			name: "port reuse within one batch on one node: two flows, each joined",
			steps: []step{
				{node: "a", batch: Batch{Processes: both,
					Sockets: []Socket{c1, ls(s1, 4), c2, ls(s2, 5)},
					Stats:   statsOf(stat{1, 5, 0, 1, 0}, stat{2, 3, 0, 1, 0}, stat{4, 0, 5, 0, 1}, stat{5, 0, 3, 0, 1}),
					Closed:  []uint32{1, 4}}},
			},
			want: []string{
				"curl/process -> nginx/process bytes=8 packets=2 opened=2 active=1",
			},
		},
		{
			name: "reused 4-tuple, sides skewed by several batches, in any order",
			steps: []step{
				{node: "a", batch: Batch{Processes: curl, Sockets: []Socket{c1}, Stats: statsOf(stat{1, 5, 1, 1, 1}), Closed: []uint32{1}}},
				{node: "a", batch: Batch{Sockets: []Socket{c2}, Stats: statsOf(stat{2, 3, 1, 1, 1}), Closed: []uint32{2}}},
				{node: "a", batch: Batch{Sockets: []Socket{c3}, Stats: statsOf(stat{3, 2, 0, 1, 0})}},
				{node: "b", batch: Batch{Processes: nginx, Sockets: []Socket{s1, s2}, Stats: statsOf(stat{1, 1, 5, 1, 1}, stat{2, 1, 3, 1, 1}), Closed: []uint32{1, 2}}},
				{node: "b", batch: Batch{Sockets: []Socket{s3}, Stats: statsOf(stat{3, 0, 2, 0, 1})}},
			},
			want: []string{
				"curl/process -> nginx/process bytes=10 packets=3 opened=3 active=1",
				"nginx/process -> curl/process bytes=2 packets=2 opened=0 active=0",
			},
		},
		{
			name: "the server reports first, then the reused client",
			steps: []step{
				{node: "b", batch: Batch{Processes: nginx, Sockets: []Socket{s1}, Stats: statsOf(stat{1, 0, 5, 0, 1}), Closed: []uint32{1}}},
				{node: "b", batch: Batch{Sockets: []Socket{s2}, Stats: statsOf(stat{2, 0, 3, 0, 1})}},
				{node: "a", batch: Batch{Processes: curl, Sockets: []Socket{c1, c2}, Stats: statsOf(stat{1, 5, 0, 1, 0}, stat{2, 3, 0, 1, 0}), Closed: []uint32{1}}},
			},
			want: []string{
				"curl/process -> nginx/process bytes=8 packets=2 opened=2 active=1",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newWindowEngine(t, 10*time.Second)
			c.advance(time.Minute) // past the start-up window
			sessions := map[string]*Session{"a": openSession(t, e, "node-a", 1), "b": openSession(t, e, "node-b", 1)}
			// Both nodes' addresses are fleet addresses: each reports a
			// self-connected socket, which joins no flow.
			seq := map[string]uint64{}
			for n, addr := range map[string]string{"a": "10.0.0.1:1", "b": "10.0.0.2:1"} {
				seq[n]++
				b := Batch{Sequence: seq[n], Sockets: []Socket{sock(99, 0, RoleClient, addr, addr, true)}}
				if err := e.Apply(sessions[n], &b); err != nil {
					t.Fatal(err)
				}
			}
			for i, st := range tc.steps {
				c.advance(max(st.after, time.Second))
				if st.publish {
					e.PublishDue()
					continue
				}
				seq[st.node]++
				b := st.batch
				b.Sequence = seq[st.node]
				if err := e.Apply(sessions[st.node], &b); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			sameLines(t, edgeLines(e), tc.want)
			if _, flows, _ := e.Counts(); flows > 2 {
				t.Errorf("%d flows left", flows)
			}
		})
	}
}

// TestSharded: two reducers, each with one node's collector, count a
// connection between their nodes once in their sum: each what its end
// sends, the connection on the client's reducer.
func TestSharded(t *testing.T) {
	engines := make([]*Engine, 2)
	clocks := make([]*clock, 2)
	for i := range engines {
		c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		e, err := New(Config{SeriesTTL: time.Hour, SessionTTL: time.Hour, JoinWindow: 10 * time.Second, Sharded: true, Now: c.now},
			prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		// Both nodes' addresses are in the fleet, as Kubernetes metadata
		// says of node and pod IPs.
		for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
			e.Metadata(resolve.RankNode).Put(resolve.IPKey(netip.MustParseAddr(a)), aggregate.Workload{Name: "node-" + a, Kind: "node"})
		}
		c.advance(time.Minute)
		engines[i], clocks[i] = e, c
	}
	a := openSession(t, engines[0], "node-a", 1)
	b := openSession(t, engines[1], "node-b", 1)
	apply(t, engines[0], a, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3})})
	apply(t, engines[1], b, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "nginx"}}, Sockets: []Socket{serverEnd}, Stats: statsOf(stat{1, 500, 100, 3, 2})})
	for i, e := range engines {
		clocks[i].advance(11 * time.Second)
		e.PublishDue()
	}
	sameLines(t, edgeLines(engines[0]), []string{"curl/process -> node-10.0.0.2/node bytes=100 packets=2 opened=1 active=1"})
	sameLines(t, edgeLines(engines[1]), []string{"nginx/process -> node-10.0.0.1/node bytes=500 packets=3 opened=0 active=0"})
}

// TestDerivedWindow: without a configured window, the join window is two
// report intervals of the slowest collector plus the greatest lag of its
// batches. A batch that lags more widens it at once; it narrows again at
// the first PublishDue a windowEvery after it was last derived.
func TestDerivedWindow(t *testing.T) {
	e, c := newWindowEngine(t, -1)
	s, err := e.Open(Hello{Node: "a", BootID: "boot-a", Epoch: 1, ReportInterval: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(lag time.Duration) {
		t.Helper()
		if err := e.Apply(s, &Batch{Time: c.now().Add(-lag)}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, w time.Duration) {
		t.Helper()
		if e.window != w {
			t.Errorf("%s: window %v, want %v", step, e.window, w)
		}
	}
	apply(0)
	want("first report, no lag", 4*time.Second)
	c.advance(time.Second)
	apply(3 * time.Second)
	want("a batch 3 s late", 7*time.Second)
	apply(0)
	want("on time again, before PublishDue", 7*time.Second)
	e.PublishDue()
	want("PublishDue", 4*time.Second)
	apply(3 * time.Second)
	apply(0)
	e.PublishDue()
	want("PublishDue within windowEvery of the last", 7*time.Second)
	c.advance(windowEvery)
	e.PublishDue()
	want("PublishDue a windowEvery later", 4*time.Second)
}

// TestBriefEnds: a connection whose two ends are each announced by their
// close, in two batches, before either address was ever reported, joins;
// a brief socket to an address outside the fleet waits the window, then
// counts one-sided without counting as a missed peer.
func TestBriefEnds(t *testing.T) {
	e, c := newWindowEngine(t, 10*time.Second)
	c.advance(time.Minute) // past the start-up window
	s := openSession(t, e, "node-a", 1)
	procs := []Process{{Handle: 1, Comm: "curl"}, {Handle: 2, Comm: "nginx"}}
	cli := withCookie(sock(1, 1, RoleClient, "198.18.0.1:40000", "198.18.0.2:80", true), 11)
	srv := withCookie(sock(2, 2, RoleServer, "198.18.0.2:80", "198.18.0.1:40000", true), 12)
	srv.Netns = 4026532000
	out := withCookie(sock(3, 1, RoleClient, "198.18.0.1:40001", "192.0.2.7:443", true), 13)
	apply(t, e, s, Batch{Sequence: 1, Processes: procs, Sockets: []Socket{cli, out},
		Stats: statsOf(stat{1, 100, 7, 2, 1}, stat{3, 5, 6, 1, 1}), Closed: []uint32{1, 3}})
	c.advance(time.Second)
	apply(t, e, s, Batch{Sequence: 2, Sockets: []Socket{srv}, Stats: statsOf(stat{2, 7, 100, 1, 2}), Closed: []uint32{2}})
	sameLines(t, edgeLines(e), []string{
		"curl/process -> nginx/process bytes=100 packets=2 opened=1 active=0",
		"nginx/process -> curl/process bytes=7 packets=1 opened=0 active=0",
	})
	c.advance(10 * time.Second)
	e.PublishDue()
	sameLines(t, edgeLines(e), []string{
		"curl/process -> nginx/process bytes=100 packets=2 opened=1 active=0",
		"nginx/process -> curl/process bytes=7 packets=1 opened=0 active=0",
		"curl/process -> 192.0.2.7/external bytes=5 packets=1 opened=1 active=0",
		"192.0.2.7/external -> curl/process bytes=6 packets=1 opened=0 active=0",
	})
	if n := testutil.ToFloat64(e.oneSided); n != 0 {
		t.Errorf("%v flows counted as missing their peer", n)
	}
}

// TestBriefReuseAcrossBatches: two brief connections on one 4-tuple of
// one node, each end reported by its close, in every order of the four
// closes (the cookie, taken at the close, follows it) and every split of
// them over two batches, join end to end: each byte once, no end left
// one-sided.
func TestBriefReuseAcrossBatches(t *testing.T) {
	type end struct {
		conn   string
		server bool
	}
	ends := []end{{"a", false}, {"a", true}, {"b", false}, {"b", true}}
	var orders [][]int
	var permute func(prefix []int, rest []int)
	permute = func(prefix, rest []int) {
		if len(rest) == 0 {
			orders = append(orders, slices.Clone(prefix))
			return
		}
		for i := range rest {
			permute(append(prefix, rest[i]), slices.Concat(rest[:i], rest[i+1:]))
		}
	}
	permute(nil, []int{0, 1, 2, 3})
	for _, order := range orders {
		for first := 1; first <= 3; first++ { // order[:first] in batch 1, the rest in batch 2
			name := ""
			for i, k := range order {
				if i == first {
					name += "|"
				}
				name += ends[k].conn
				if ends[k].server {
					name += "S"
				} else {
					name += "C"
				}
			}
			t.Run(name, func(t *testing.T) {
				e, c := newWindowEngine(t, 10*time.Second)
				c.advance(time.Minute)
				s := openSession(t, e, "node-a", 1)
				procs := []Process{{Handle: 1, Comm: "curl"}, {Handle: 2, Comm: "nginx"}}
				for seq, part := range [][]int{order[:first], order[first:]} {
					b := Batch{Sequence: uint64(seq + 1)}
					if seq == 0 {
						b.Processes = procs
					}
					var st []stat
					for _, k := range part {
						h := uint32(k + 1)
						pos := slices.Index(order, k)
						var so Socket
						if ends[k].server {
							so = sock(h, 2, RoleServer, "198.18.0.2:80", "198.18.0.1:40000", true)
							st = append(st, stat{h, 7, 100, 1, 2})
						} else {
							so = sock(h, 1, RoleClient, "198.18.0.1:40000", "198.18.0.2:80", true)
							st = append(st, stat{h, 100, 7, 2, 1})
						}
						b.Sockets = append(b.Sockets, withCookie(so, uint64(11+pos)))
						b.Closed = append(b.Closed, h)
					}
					slices.SortFunc(st, func(x, y stat) int { return int(x.handle) - int(y.handle) })
					b.Stats = statsOf(st...)
					apply(t, e, s, b)
					c.advance(time.Second)
				}
				c.advance(10 * time.Second)
				e.PublishDue()
				sameLines(t, edgeLines(e), []string{
					"curl/process -> nginx/process bytes=200 packets=4 opened=2 active=0",
					"nginx/process -> curl/process bytes=14 packets=2 opened=0 active=0",
				})
				if n := testutil.ToFloat64(e.oneSided); n != 0 {
					t.Errorf("%v flows counted as missing their peer", n)
				}
			})
		}
	}
}
