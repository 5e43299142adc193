package match

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a manual clock for the engine.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestEngine(t testing.TB, loopback bool) (*Engine, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, err := New(Config{
		SeriesTTL:  5 * time.Minute,
		SessionTTL: 2 * time.Minute,
		Loopback:   loopback,
		Now:        c.now,
	}, prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return e, c
}

func openSession(t testing.TB, e *Engine, node string, epoch uint64) *Session {
	t.Helper()
	s, err := e.Open(Hello{Node: node, BootID: "boot-" + node, Epoch: epoch}, nil)
	if err != nil {
		t.Fatalf("open %s epoch %d: %v", node, epoch, err)
	}
	return s
}

// stat is one stats entry.
type stat struct {
	handle                 uint32
	sent, recv             uint64
	segsSent, segsReceived uint64
}

// statsOf builds the stats columns of entries given in ascending handle order.
func statsOf(entries ...stat) Stats {
	var s Stats
	for _, e := range entries {
		s.Handles = append(s.Handles, e.handle)
		s.BytesSent = append(s.BytesSent, e.sent)
		s.BytesReceived = append(s.BytesReceived, e.recv)
		s.SegmentsSent = append(s.SegmentsSent, e.segsSent)
		s.SegmentsReceived = append(s.SegmentsReceived, e.segsReceived)
	}
	return s
}

func sock(handle, proc uint32, role Role, local, remote string, newConn bool) Socket {
	return Socket{
		Handle:        handle,
		Process:       proc,
		Role:          role,
		Local:         netip.MustParseAddrPort(local),
		Remote:        netip.MustParseAddrPort(remote),
		Netns:         4026531840,
		NewConnection: newConn,
	}
}

// edgeLines renders the edge table, one sorted line per edge.
func edgeLines(e *Engine) []string {
	var out []string
	for _, s := range e.Snapshot(nil) {
		out = append(out, fmt.Sprintf("%s/%s -> %s/%s bytes=%d packets=%d opened=%d active=%d",
			s.Key.Src.Name, s.Key.Src.Kind, s.Key.Dst.Name, s.Key.Dst.Kind,
			s.Value(aggregate.TCPBytes), s.Value(aggregate.TCPPackets), s.Value(aggregate.TCPConnectionsOpened), s.Value(aggregate.TCPActiveConnections)))
	}
	slices.Sort(out)
	return out
}

func sameLines(t *testing.T, got, want []string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("edges:\ngot:\n  %s\nwant:\n  %s", join(got), join(want))
	}
}

func join(lines []string) string {
	out := ""
	for i, l := range lines {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}
