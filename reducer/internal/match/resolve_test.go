package match

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// TestMetadataArrivesLater names an end of a live flow after it started: the
// edge moves to the new name within one interval, what was counted stays
// on the old edge, new traffic counts on the new one, and nothing is lost
// or counted twice.
func TestMetadataArrivesLater(t *testing.T) {
	web := aggregate.Workload{Name: "web", Kind: "deployment", Namespace: "shop"}
	tests := []struct {
		name     string
		withPeer bool // node b reports the server end
		key      resolve.Key
		settle   func(e *Engine, s map[string]*Session) // the interval after the metadata
		want     []string
	}{
		{
			name: "remote address named by a pod",
			key:  resolve.IPKey(netip.MustParseAddr("10.0.0.2")),
			settle: func(e *Engine, s map[string]*Session) {
				apply(t, e, s["a"], Batch{Sequence: 3, Stats: statsOf(stat{1, 50, 70, 1, 1})})
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=100 packets=2 opened=1 active=0",
				"10.0.0.2/external -> curl/process bytes=500 packets=3 opened=0 active=0",
				"curl/process -> web/deployment bytes=50 packets=1 opened=0 active=1",
				"web/deployment -> curl/process bytes=70 packets=1 opened=0 active=0",
			},
		},
		{
			name:     "local cgroup named, both ends reported",
			withPeer: true,
			key:      resolve.CgroupKey("node-b", 77),
			settle: func(e *Engine, s map[string]*Session) {
				// The server's first report covers the whole connection.
				apply(t, e, s["b"], Batch{Sequence: 2, Stats: statsOf(stat{1, 570, 150, 4, 3})})
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0",
				"curl/process -> nginx/process bytes=100 packets=2 opened=0 active=0",
				"nginx/process -> curl/process bytes=500 packets=3 opened=0 active=0",
				"curl/process -> web/deployment bytes=50 packets=1 opened=0 active=1",
				"web/deployment -> curl/process bytes=70 packets=1 opened=0 active=0",
			},
		},
		{
			name: "an idle flow moves at the next sweep",
			key:  resolve.IPKey(netip.MustParseAddr("10.0.0.2")),
			settle: func(e *Engine, _ map[string]*Session) {
				e.Sweep()
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=100 packets=2 opened=1 active=0",
				"10.0.0.2/external -> curl/process bytes=500 packets=3 opened=0 active=0",
				"curl/process -> web/deployment bytes=0 packets=0 opened=0 active=1",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, true)
			s := map[string]*Session{"a": openSession(t, e, "node-a", 1)}
			apply(t, e, s["a"], Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl", CgroupID: 76}}, Sockets: []Socket{clientEnd}})
			sent := uint64(100)
			if tc.withPeer {
				s["b"] = openSession(t, e, "node-b", 1)
				apply(t, e, s["b"], Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "nginx", CgroupID: 77}}, Sockets: []Socket{serverEnd}})
			}
			c.advance(time.Second)
			// 100 bytes from curl, 500 back, counted from the client's end.
			apply(t, e, s["a"], Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 500, 2, 3})})

			// A metadata source names the server after the flow started.
			src := resolve.SourceFunc(func(_ context.Context, sink resolve.Sink) error {
				sink.Put(tc.key, web)
				return nil
			})
			if err := src.Run(t.Context(), e.Metadata(resolve.RankPod)); err != nil {
				t.Fatal(err)
			}
			c.advance(time.Second)
			tc.settle(e, s)
			sameLines(t, edgeLines(e), tc.want)

			// Old + new == everything sent, per direction: nothing lost or
			// doubled.
			var toServer uint64
			for _, sr := range e.Snapshot(nil) {
				if sr.Key.Src.Name == "curl" {
					toServer += sr.Value(aggregate.TCPBytes)
				}
			}
			if tc.name != "an idle flow moves at the next sweep" {
				sent += 50
			}
			if toServer != sent {
				t.Errorf("curl sent %d bytes over its edges, want %d", toServer, sent)
			}
		})
	}
}

// TestNodeLevel: at the node level a local end carries its node, and two
// nodes running the same process make two edges.
func TestNodeLevel(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, err := New(Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Level: aggregate.LevelNode, Now: c.now},
		prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for i, node := range []string{"node-a", "node-b"} {
		s := openSession(t, e, node, 1)
		end := sock(1, 1, RoleClient, "10.0.0."+string(rune('1'+i))+":40000", "192.0.2.1:443", true)
		apply(t, e, s, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{end},
			Stats: statsOf(stat{1, 10, 0, 1, 0})})
	}
	nodes := map[string]uint64{}
	for _, s := range e.Snapshot(nil) {
		if s.Key.Src.Name == "curl" {
			nodes[s.Key.Src.Node] += s.Value(aggregate.TCPBytes)
		}
	}
	if len(nodes) != 2 || nodes["node-a"] != 10 || nodes["node-b"] != 10 {
		t.Errorf("bytes by source node %v, want 10 from each of node-a and node-b", nodes)
	}
}
