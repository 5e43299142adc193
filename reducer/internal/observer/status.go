package observer

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
)

// Collectors tracks the collectors' ingest streams as a gRPC stats handler:
// it reads each stream's hello (the first message) and the time of its
// latest message, without touching the ingest service.
type Collectors struct {
	mu      sync.Mutex
	streams map[*collectorStream]struct{}
}

type collectorStream struct {
	connected time.Time
	hello     bool
	node      string
	version   string
	kernel    string
	epoch     uint64
	last      time.Time
	messages  uint64
}

type collectorKey struct{}

var ingestStream = "/" + ingestv1.IngestService_ServiceDesc.ServiceName + "/Stream"

// NewCollectors returns an empty tracker.
func NewCollectors() *Collectors {
	return &Collectors{streams: make(map[*collectorStream]struct{})}
}

// TagRPC marks the ingest streams.
func (c *Collectors) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName != ingestStream {
		return ctx
	}
	return context.WithValue(ctx, collectorKey{}, &collectorStream{connected: time.Now()})
}

// HandleRPC reads the hello of an ingest stream and notes each message.
func (c *Collectors) HandleRPC(ctx context.Context, st stats.RPCStats) {
	cs, ok := ctx.Value(collectorKey{}).(*collectorStream)
	if !ok {
		return
	}
	switch st := st.(type) {
	case *stats.InPayload:
		c.mu.Lock()
		defer c.mu.Unlock()
		cs.last = st.RecvTime
		cs.messages++
		if cs.hello || cs.messages > 1 {
			return
		}
		var data []byte
		switch p := st.Payload.(type) {
		case *grpcserver.Frame:
			data = p.Data
		case proto.Message:
			data, _ = proto.Marshal(p)
		}
		var req ingestv1.StreamRequest
		if proto.Unmarshal(data, &req) != nil || req.GetHello() == nil {
			return
		}
		h := req.GetHello()
		cs.hello, cs.node, cs.version, cs.kernel, cs.epoch = true, h.GetNodeName(), h.GetCollectorVersion(), h.GetKernelRelease(), h.GetEpoch()
		c.streams[cs] = struct{}{}
	case *stats.End:
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.streams, cs)
	}
}

// TagConn is a no-op.
func (c *Collectors) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

// HandleConn is a no-op.
func (c *Collectors) HandleConn(context.Context, stats.ConnStats) {}

// List returns the connected collectors sorted by node, with their lag at
// now: the time since their last message.
func (c *Collectors) List(now time.Time) []*observerv1.Collector {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*observerv1.Collector, 0, len(c.streams))
	for cs := range c.streams {
		out = append(out, &observerv1.Collector{
			Node: cs.node, Version: cs.version, KernelRelease: cs.kernel, Epoch: cs.epoch,
			ConnectedAt: timestamppb.New(cs.connected),
			Lag:         durationpb.New(max(now.Sub(cs.last), 0)),
			Messages:    cs.messages,
		})
	}
	slices.SortFunc(out, func(a, b *observerv1.Collector) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), cmp.Compare(a.Epoch, b.Epoch))
	})
	return out
}

// Losses returns the reducer's loss counters from g: every counter whose
// name says lost, loss or dropped, summed by its labels other than node.
func Losses(g prometheus.Gatherer) ([]*observerv1.Loss, error) {
	mfs, err := g.Gather()
	type key struct{ metric, reason string }
	sums := make(map[key]float64)
	var keys []key
	for _, mf := range mfs {
		name := mf.GetName()
		isLoss := strings.Contains(name, "_lost") || strings.Contains(name, "_loss") || strings.Contains(name, "_dropped")
		if mf.GetType() != dto.MetricType_COUNTER || !isLoss {
			continue
		}
		for _, m := range mf.GetMetric() {
			var parts []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "node" {
					parts = append(parts, l.GetValue())
				}
			}
			k := key{name, strings.Join(parts, ",")}
			if _, ok := sums[k]; !ok {
				keys = append(keys, k)
			}
			sums[k] += m.GetCounter().GetValue()
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(strings.Compare(a.metric, b.metric), strings.Compare(a.reason, b.reason))
	})
	out := make([]*observerv1.Loss, 0, len(keys))
	for _, k := range keys {
		out = append(out, &observerv1.Loss{Metric: k.metric, Reason: k.reason, Count: uint64(sums[k])})
	}
	return out, err
}
