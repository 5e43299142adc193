package fleet

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// replay holds a replay's collectors back until every one has its
// batches, so that the sending starts together. Then they send in lockstep:
// at step s, collector n sends its batch of interval s - n.skew, and no
// collector goes on to the next step before every one has sent its batch
// of this one. Collectors that raced ahead by tens of intervals would
// leave their peers' ends outside the reducer's join window, which no real
// fleet does: a collector's batches are an interval apart.
type replay struct {
	wg    sync.WaitGroup
	start chan struct{}
	steps []sync.WaitGroup
}

func newReplay(n, steps int) *replay {
	r := &replay{start: make(chan struct{}), steps: make([]sync.WaitGroup, steps)}
	r.wg.Add(n)
	for i := range r.steps {
		r.steps[i].Add(n)
	}
	go func() {
		r.wg.Wait()
		close(r.start)
	}()
	return r
}

// replayWindow is how many batches a replaying collector has sent and
// not yet had acked, at most: the reducer then applies every stream within
// a few batches of the others, as in a real fleet, where a collector sends
// one batch per interval.
const replayWindow = 4

// replay opens the node's stream, takes every batch that Run builds for it
// (it closes n.out once all are built), then, once every node is ready,
// sends them as fast as the reducer takes them: in lockstep with the other
// nodes (see replay), with at most replayWindow unacked. Each batch is
// stamped with the time it is sent, as a collector stamps its report, so
// that the reducer sees how far behind it applies it.
func (n *node) replay(ctx context.Context, cfg Config, stats *Stats, rp *replay) error {
	ready := sync.OnceFunc(rp.wg.Done)
	step := 0 // the steps this node has passed
	defer func() {
		// A node that fails does not hold the others back.
		ready()
		for ; step < len(rp.steps); step++ {
			rp.steps[step].Done()
		}
	}()
	cc, opts, err := n.dial(cfg)
	if err != nil {
		return err
	}
	defer cc.Close()
	st, err := open(ctx, cc, n, 1, cfg.Interval, cfg.AckEvery, opts)
	if err != nil {
		return err
	}
	defer st.cancel()
	var batches []*ingestv1.Batch
	for it := range n.out {
		batches = append(batches, it.batch)
	}
	ready()
	select {
	case <-rp.start:
	case <-ctx.Done():
		return ctx.Err()
	}
	for ; step < len(rp.steps); step++ {
		if i := step - n.skew; i >= 0 && i < len(batches) {
			for st.seq-st.acked.Load() >= replayWindow {
				select {
				case <-st.acks:
				case err := <-st.done:
					return fmt.Errorf("stream ended with %d of %d batches acked: %w", st.acked.Load(), st.seq, err)
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			b := batches[i]
			st.number(b)
			b.Time = timestamppb.Now()
			if err := st.s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}}); err != nil {
				return fmt.Errorf("send batch %d: %w", st.seq, st.wait(err))
			}
			batches[i] = nil
			atomic.AddUint64(&stats.Updates, uint64(len(b.GetStats().GetHandleGaps())))
			atomic.AddUint64(&stats.Batches, 1)
		}
		rp.steps[step].Done()
		rp.steps[step].Wait()
	}
	return st.end()
}
