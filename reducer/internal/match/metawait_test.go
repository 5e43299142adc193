package match

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// TestMetadataWait: a reducer that starts with a k8s-watcher holds every
// flow until the watcher's first snapshot, so that traffic seen before it
// counts under pods, not under container ids or processes; without a
// snapshot it counts what it held at the wait's deadline, by what it knows.
func TestMetadataWait(t *testing.T) {
	checkout := aggregate.Workload{Name: "checkout", Kind: "deployment", Namespace: "shop"}
	cart := aggregate.Workload{Name: "cart", Kind: "deployment", Namespace: "store"}
	tests := []struct {
		name string
		end  func(e *Engine, c *clock) // ends the wait
		want []string
	}{
		{
			name: "the snapshot names both ends",
			end: func(e *Engine, c *clock) {
				src := resolve.SourceFunc(func(_ context.Context, sink resolve.Sink) error {
					sink.Put(resolve.CgroupKey("node-a", 76), checkout)
					sink.Put(resolve.CgroupKey("node-b", 77), cart)
					return nil
				})
				if err := src.Run(t.Context(), e.Metadata(resolve.RankPod)); err != nil {
					t.Fatal(err)
				}
				c.advance(time.Second)
				e.MetadataSynced()
			},
			want: []string{
				"checkout/deployment -> cart/deployment bytes=100 packets=2 opened=1 active=1",
				"cart/deployment -> checkout/deployment bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "no snapshot within the wait",
			end:  func(_ *Engine, c *clock) { c.advance(30 * time.Second) },
			want: []string{
				"curl/process -> nginx/process bytes=100 packets=2 opened=1 active=1",
				"nginx/process -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			e, err := New(Config{SeriesTTL: 5 * time.Minute, SessionTTL: 2 * time.Minute, MetadataWait: 30 * time.Second, Now: c.now},
				prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			a, b := openSession(t, e, "node-a", 1), openSession(t, e, "node-b", 1)
			apply(t, e, a, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl", CgroupID: 76}}, Sockets: []Socket{clientEnd}})
			apply(t, e, b, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "nginx", CgroupID: 77}}, Sockets: []Socket{serverEnd}})
			c.advance(time.Second)
			apply(t, e, a, Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 500, 2, 3})})
			e.PublishDue()
			if got := edgeLines(e); len(got) != 0 {
				t.Fatalf("edges during the metadata wait:\n  %s", join(got))
			}
			tc.end(e, c)
			e.PublishDue()
			sameLines(t, edgeLines(e), tc.want)
		})
	}
}
