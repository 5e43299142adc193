package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// Herd is a fleet of collectors that only hold sockets: each announces its
// sockets in the first batch of every stream, and when its stream fails it
// reconnects as weir-collector does, after a backoff that starts at 500 ms,
// doubles, is capped at the report interval, and is jittered by ±50%.
type Herd struct {
	Addr     string
	Interval time.Duration

	nodes     []*node
	connected atomic.Int64
	wg        sync.WaitGroup
}

// NewHerd makes n collectors of perNode sockets each.
func NewHerd(addr string, n, perNode int, interval time.Duration) *Herd {
	h := &Herd{Addr: addr, Interval: interval}
	for i := range n {
		nd := &node{id: i, name: fmt.Sprintf("herd-%04d", i), addr: netip.AddrFrom4([4]byte{198, 18, byte((i + 1) >> 8), byte(i + 1)}),
			live: make(map[uint32]*sock), b: newBuilder(), cookie: uint64(i)<<40 | 1}
		for j := range perNode {
			nd.socket(1, ingestv1.Role_ROLE_CLIENT, netip.AddrPortFrom(nd.addr, uint16(10000+j)),
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 1, byte(j)}), 443))
		}
		h.nodes = append(h.nodes, nd)
	}
	return h
}

// Connected returns how many collectors have their snapshot acked on a
// live stream.
func (h *Herd) Connected() int { return int(h.connected.Load()) }

// Run keeps every collector connected until ctx is done.
func (h *Herd) Run(ctx context.Context) {
	for _, n := range h.nodes {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.keep(ctx, n)
		}()
	}
}

// Wait waits for the collectors after ctx is done.
func (h *Herd) Wait() { h.wg.Wait() }

func (h *Herd) keep(ctx context.Context, n *node) {
	var epoch uint64
	wait := 500 * time.Millisecond
	for ctx.Err() == nil {
		epoch++
		if err := h.session(ctx, n, epoch); err == nil {
			wait = 500 * time.Millisecond // it was up: start over
		}
		d := time.Duration(float64(wait) * (0.5 + rand.Float64()))
		wait = min(2*wait, h.Interval)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}

// session sends a snapshot and holds the stream until it fails. It returns
// nil if the snapshot was acked.
//
// Like weir-collector, it dials anew for each stream, so that grpc's own
// reconnect backoff of a failed channel never adds to the collector's.
func (h *Herd) session(ctx context.Context, n *node, epoch uint64) error {
	cc, err := grpc.NewClient(h.Addr, collectorDial()...)
	if err != nil {
		return err
	}
	defer cc.Close()
	st, err := open(ctx, cc, n, epoch, h.Interval, 0, nil)
	if err != nil {
		return err
	}
	defer st.cancel()
	b := n.flush(time.Now(), true)
	for _, s := range b.Sockets {
		s.NewConnection = false
	}
	st.number(b)
	if err := st.s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}}); err != nil {
		return err
	}
	for st.acked.Load() < 1 {
		select {
		case err := <-st.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	h.connected.Add(1)
	defer h.connected.Add(-1)
	select {
	case err := <-st.done:
		// It was up, with its snapshot acked: its end (e.g. the reducer
		// going away) is what the herd measures, not a failure, and the
		// next session starts without backoff.
		_ = err
	case <-ctx.Done():
	}
	return nil
}
