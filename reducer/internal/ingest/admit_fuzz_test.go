package ingest

import (
	"context"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/authn"
	"github.com/weir-project/weir/reducer/internal/match"
)

// FuzzSessions drives the hello and session state machine (admission, then
// the engine's Open, Detach and the session caps) with arbitrary sequences
// of hellos from peers with and without certificates, and checks it against
// a model:
//   - a hello is admitted exactly when its peer may speak for the node, its
//     epoch is within the skew, and it is not stale (same boot, epoch not
//     greater than the node's session);
//   - an admitted hello cancels the node's previous session exactly once, and
//     a refused one cancels nothing: no peer without the node's identity, and
//     no epoch beyond the bound, ever ends the node's session;
//   - a session never holds more sockets or processes than its caps.
func FuzzSessions(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 2, 0, 2, 0, 0, 5, 3, 0, 0, 0, 0})
	f.Add([]byte{0, 1, 0, 0, 2, 0, 0, 1, 0, 6, 0, 0, 1, 0, 3, 2, 0, 200, 4, 2, 0, 150, 100})
	f.Add([]byte{0, 0, 0, 0, 3, 0, 0, 0, 0, 7, 0, 4, 1, 1, 1, 0, 1, 0, 0, 4, 1, 0, 0, 255, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		logger := slog.New(slog.NewTextHandler(io.Discard, nil))
		reg := prometheus.NewRegistry()
		now := time.Unix(1_800_000_000, 0)
		engine, err := match.New(match.Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Loopback: true}, reg, logger)
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(engine, reg, logger)
		if err != nil {
			t.Fatal(err)
		}
		const skew = 5 * time.Minute
		s.SetAdmission(Admission{MaxEpochSkew: skew, MaxSessionSockets: 300, MaxSessionProcesses: 50})
		s.now = func() time.Time { return now }

		nodes := []string{"node-a", "node-b", "node-c"}
		peers := []struct {
			ok bool // false: plaintext, no identity
			id authn.Identity
		}{
			{},
			{true, authn.Identity{Kind: authn.KindNode, Name: "node-a"}},
			{true, authn.Identity{Kind: authn.KindNode, Name: "node-b"}},
			{true, authn.Identity{Kind: authn.KindNode, Name: "node-c"}},
			{true, authn.Identity{Kind: authn.KindObserver, Name: "node-a"}},
			{true, authn.Identity{Kind: authn.KindWatcher}},
		}
		boots := []string{"boot-1", "boot-2"}
		limit := uint64(now.Add(skew).UnixNano())
		epochs := []uint64{1, 2, uint64(now.UnixNano()), limit - 1, limit, limit + 1, math.MaxUint64, uint64(now.Add(-time.Hour).UnixNano())}

		type model struct {
			boot      string
			epoch     uint64
			cancelled *int
			sess      *match.Session
			held      holdings
			detached  bool // its stream ended: nothing left to cancel
		}
		current := map[string]*model{}
		var live []*model
		r := &fuzzReader{data: data}
		for steps := 0; !r.done() && steps < 200; steps++ {
			switch r.small(4) {
			case 0, 1: // a hello
				p := peers[r.small(len(peers))]
				node := nodes[r.small(len(nodes))]
				boot := boots[r.small(len(boots))]
				epoch := epochs[r.small(len(epochs))] + uint64(r.small(3))
				ctx := context.Background()
				if p.ok {
					ctx = authn.WithIdentity(ctx, p.id)
				}
				old := current[node]
				want := (!p.ok || p.id.Kind == authn.KindNode && p.id.Name == node) && epoch <= limit &&
					(old == nil || old.boot != boot || epoch > old.epoch)
				var n int
				h := &ingestv1.Hello{ProtocolVersion: 1, NodeName: node, BootId: boot, Epoch: epoch}
				sess, err := s.open(ctx, logger, h, func() { n++ })
				if (err == nil) != want {
					t.Fatalf("hello %s/%s epoch %d from %+v: err %v, want admitted=%v (old %+v)", node, boot, epoch, p, err, want, old)
				}
				if err != nil {
					switch c := status.Code(err); {
					case !p.ok || p.id.Kind == authn.KindNode && p.id.Name == node:
						if c != codes.FailedPrecondition {
							t.Fatalf("refused epoch: %v", err)
						}
					case c != codes.PermissionDenied:
						t.Fatalf("refused identity: %v", err)
					}
					break
				}
				if old != nil {
					want := 1
					if old.detached {
						want = 0
					}
					if *old.cancelled != want {
						t.Fatalf("replaced session cancelled %d times, want %d", *old.cancelled, want)
					}
				}
				m := &model{boot: boot, epoch: epoch, cancelled: &n, sess: sess}
				current[node] = m
				live = append(live, m)
			case 2: // a stream ends
				if len(live) == 0 {
					break
				}
				i := r.small(len(live))
				engine.Detach(live[i].sess)
				live[i].detached = true
				live = append(live[:i], live[i+1:]...)
			case 3: // a batch's announcements against the caps
				if len(live) == 0 {
					break
				}
				m := live[r.small(len(live))]
				socks, procs := int(r.next()), r.small(60)
				closed := min(r.small(256), m.held.sockets)
				err := s.admit(logger, &m.held, 1, socks, procs)
				want := m.held.sockets+socks <= 300 && m.held.procs+procs <= 50
				if (err == nil) != want {
					t.Fatalf("batch of %d sockets, %d processes on %+v: %v", socks, procs, m.held, err)
				}
				if err != nil {
					if status.Code(err) != codes.ResourceExhausted {
						t.Fatalf("cap: %v", err)
					}
					break
				}
				m.held.applied(socks, closed, procs, 0)
			}
			for node, m := range current {
				if *m.cancelled != 0 {
					t.Fatalf("the current session of %s was cancelled", node)
				}
				if m.held.sockets > 300 || m.held.procs > 50 || m.held.sockets < 0 {
					t.Fatalf("holdings %+v beyond the caps", m.held)
				}
			}
		}
	})
}
