package fleet

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// replay holds a replay's collectors back until every one has encoded
// its batches, so that the sending starts together and no collector's
// encoding runs beside another's sending.
type replay struct {
	wg    sync.WaitGroup
	start chan struct{}
}

func newReplay(n int) *replay {
	r := &replay{start: make(chan struct{})}
	r.wg.Add(n)
	go func() {
		r.wg.Wait()
		close(r.start)
	}()
	return r
}

// replay opens the node's stream, encodes every batch that Run builds for
// it (it closes n.out once all are built), then sends them back to back
// once every node is ready, and waits for their acks.
func (n *node) replay(ctx context.Context, cfg Config, stats *Stats, rp *replay) error {
	ready := sync.OnceFunc(rp.wg.Done)
	defer ready() // a node that fails does not hold the others back
	cc, err := grpc.NewClient(Pick(n.name, cfg.Reducers), collectorDial()...)
	if err != nil {
		return err
	}
	defer cc.Close()
	var opts []grpc.CallOption
	switch cfg.Compressor {
	case "gzip":
		opts = append(opts, grpc.UseCompressor(gzip.Name))
	case Zstd:
		opts = append(opts, grpc.UseCompressor(Zstd))
	}
	st, err := open(ctx, cc, n, 1, cfg.Interval, opts)
	if err != nil {
		return err
	}
	defer st.cancel()
	var msgs []*grpc.PreparedMsg
	var updates []int
	for it := range n.out {
		it.batch.Sequence = uint64(len(msgs) + 1)
		req := &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: it.batch}}
		pm := new(grpc.PreparedMsg)
		if err := pm.Encode(st.s, req); err != nil {
			return fmt.Errorf("encode batch %d: %w", it.batch.Sequence, err)
		}
		msgs = append(msgs, pm)
		updates = append(updates, len(it.batch.GetStats().GetHandleGaps()))
	}
	ready()
	select {
	case <-rp.start:
	case <-ctx.Done():
		return ctx.Err()
	}
	for i, pm := range msgs {
		st.seq++
		if err := st.s.SendMsg(pm); err != nil {
			return fmt.Errorf("send batch %d: %w", st.seq, st.wait(err))
		}
		msgs[i] = nil
		atomic.AddUint64(&stats.Updates, uint64(updates[i]))
		atomic.AddUint64(&stats.Batches, 1)
	}
	return st.end()
}
