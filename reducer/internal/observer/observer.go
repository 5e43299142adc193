// Package observer serves the Observer API (weir.observer.v1) on the
// reducer's gRPC server: the service map, its changes, per-connection flow
// events with in-band loss reports, and the reducer's status.
package observer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/servicemap"
)

// Engine is what the observer reads; *match.Engine is one.
type Engine interface {
	EventSource
	servicemap.Source
	Counts() (sockets, flows, edges int)
}

// Config tunes the observer.
type Config struct {
	// MaxStreams caps the concurrent WatchFlows and WatchServiceMap
	// streams (--max-observers).
	MaxStreams int
	// StreamBuffer is the number of events buffered for each stream; a
	// stream that falls further behind loses events and is told so.
	StreamBuffer int
	// RingSize is the number of recent flow events kept for since/last.
	RingSize int
	// EventBuffer is the buffer of the subscription to the engine's events
	// (a few per connection: its sockets' and its flow's opens and closes),
	// read each Poll.
	EventBuffer int
	// MaxFlows caps the connections whose state (endpoints, workloads,
	// totals) the observer keeps.
	MaxFlows int
	// Linger is how long the observer keeps following the engine's events
	// after the last WatchFlows stream ended, so that since and last find
	// recent events; negative: always, from the start (as Hubble does).
	// While no one follows, the engine builds no events at all.
	Linger time.Duration
	// Poll is how often the engine's events are read.
	Poll time.Duration
	// UpdateInterval is how often the traffic of a connection is read from
	// the engine and sent as update events (one per direction with
	// traffic).
	UpdateInterval time.Duration
	// OpenPoll is how often the traffic is read while opens wait for
	// their flows' first traffic, which names their workloads.
	OpenPoll time.Duration
	// DrainBatch is how many flows' traffic is read from the engine at a
	// time (under its lock).
	DrainBatch int
	// OpenGrace is how long an open waits for the flow's first traffic,
	// which names its workloads, before it is sent without them.
	OpenGrace time.Duration
	// MapInterval is the default interval of WatchServiceMap;
	// MinMapInterval the shortest a client may ask for.
	MapInterval, MinMapInterval time.Duration
	// Version is the reducer's version, for GetStatus.
	Version string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxStreams:     16,
		StreamBuffer:   1024,
		RingSize:       4096,
		EventBuffer:    1 << 14,
		MaxFlows:       1 << 18,
		Linger:         5 * time.Minute,
		Poll:           5 * time.Millisecond,
		UpdateInterval: time.Second,
		OpenPoll:       100 * time.Millisecond,
		DrainBatch:     16384,
		OpenGrace:      2 * time.Second,
		MapInterval:    5 * time.Second,
		MinMapInterval: 100 * time.Millisecond,
		Version:        "dev",
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.MaxStreams < 0:
		return fmt.Errorf("max streams %d: must not be negative", c.MaxStreams)
	case c.StreamBuffer < 1:
		return fmt.Errorf("stream buffer %d: must be at least 1", c.StreamBuffer)
	case c.RingSize < 0:
		return fmt.Errorf("ring size %d: must not be negative", c.RingSize)
	case c.EventBuffer < 1, c.MaxFlows < 1, c.DrainBatch < 1:
		return errors.New("event buffer, max flows and drain batch must be at least 1")
	case c.OpenGrace <= 0, c.MapInterval <= 0, c.MinMapInterval <= 0, c.Poll <= 0, c.UpdateInterval <= 0, c.OpenPoll <= 0:
		return errors.New("poll, update, open poll, open grace and map intervals must be positive")
	}
	return nil
}

// Observer is the ObserverService.
type Observer struct {
	observerv1.UnimplementedObserverServiceServer

	cfg        Config
	logger     *slog.Logger
	engine     Engine
	maps       *servicemap.Builder
	gatherer   prometheus.Gatherer
	metrics    *metrics
	hub        *hub
	collectors *Collectors
	started    time.Time

	streams  atomic.Int32
	stopping chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
}

// New returns an observer of engine. gatherer is read for GetStatus's loss
// counters; the observer's own metrics register with reg.
func New(cfg Config, engine Engine, gatherer prometheus.Gatherer, reg prometheus.Registerer, logger *slog.Logger) (*Observer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	o := &Observer{
		cfg:        cfg,
		logger:     logger.With("component", "observer"),
		engine:     engine,
		maps:       servicemap.New(engine),
		gatherer:   gatherer,
		metrics:    m,
		hub:        newHub(cfg, m, engine),
		collectors: NewCollectors(),
		started:    time.Now(),
		stopping:   make(chan struct{}),
	}
	m.maxStreams.Set(float64(cfg.MaxStreams))
	return o, nil
}

// Register registers the service on a gRPC server.
func (o *Observer) Register(r grpc.ServiceRegistrar) {
	observerv1.RegisterObserverServiceServer(r, o)
}

// StatsHandler returns the handler that tracks the collectors' ingest
// streams for GetStatus. The gRPC server must be made with it.
func (o *Observer) StatsHandler() stats.Handler { return o.collectors }

// Start starts following the engine's events. It returns at once.
func (o *Observer) Start(ctx context.Context) error {
	ctx, o.cancel = context.WithCancel(context.WithoutCancel(ctx))
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.hub.run(ctx)
	}()
	o.logger.Info("started", "max_streams", o.cfg.MaxStreams, "ring_size", o.cfg.RingSize)
	return nil
}

// Shutdown ends every stream and stops following the engine. It is safe to
// call more than once.
func (o *Observer) Shutdown(context.Context) error {
	o.once.Do(func() {
		close(o.stopping)
		if o.cancel != nil {
			o.cancel()
		}
		o.wg.Wait()
		o.logger.Info("stopped")
	})
	return nil
}

// acquire takes one of the stream slots.
func (o *Observer) acquire() (func(), error) {
	if n := o.streams.Add(1); int(n) > o.cfg.MaxStreams {
		o.streams.Add(-1)
		o.metrics.refused.Inc()
		return nil, status.Errorf(codes.ResourceExhausted,
			"the reducer already serves %d observer streams (its --max-observers); close one or raise the flag", o.cfg.MaxStreams)
	}
	o.metrics.streams.Inc()
	return func() {
		o.streams.Add(-1)
		o.metrics.streams.Dec()
	}, nil
}

// GetServiceMap returns the current map.
func (o *Observer) GetServiceMap(context.Context, *observerv1.GetServiceMapRequest) (*observerv1.GetServiceMapResponse, error) {
	return &observerv1.GetServiceMapResponse{Map: o.maps.Map()}, nil
}

// WatchServiceMap sends the map, then its changes each interval.
func (o *Observer) WatchServiceMap(req *observerv1.WatchServiceMapRequest, stream grpc.ServerStreamingServer[observerv1.WatchServiceMapResponse]) error {
	release, err := o.acquire()
	if err != nil {
		return err
	}
	defer release()
	every := o.cfg.MapInterval
	if d := req.GetInterval(); d != nil {
		every = max(d.AsDuration(), o.cfg.MinMapInterval)
	}
	prev := o.maps.Map()
	if err := stream.Send(&observerv1.WatchServiceMapResponse{Response: &observerv1.WatchServiceMapResponse_Snapshot{Snapshot: prev}}); err != nil {
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-o.stopping:
			return status.Error(codes.Unavailable, "reducer shutting down")
		case <-t.C:
			next := o.maps.Map()
			change := servicemap.Diff(prev, next)
			prev = next
			if err := stream.Send(&observerv1.WatchServiceMapResponse{Response: &observerv1.WatchServiceMapResponse_Change{Change: change}}); err != nil {
				return err
			}
		}
	}
}

// WatchFlows sends the recent flow events asked for, then, with follow, the
// new ones. Its buffer is bounded: when it overflows the stream gets a
// LostEvents message before the next event it receives.
func (o *Observer) WatchFlows(req *observerv1.WatchFlowsRequest, stream grpc.ServerStreamingServer[observerv1.WatchFlowsResponse]) error {
	release, err := o.acquire()
	if err != nil {
		return err
	}
	defer release()
	s := &sub{ch: make(chan item, o.cfg.StreamBuffer), allow: req.GetAllowlist(), deny: req.GetDenylist()}
	recent := o.hub.subscribe(s, req)
	defer o.hub.unsubscribe(s)
	for _, f := range recent {
		if err := stream.Send(&observerv1.WatchFlowsResponse{Response: &observerv1.WatchFlowsResponse_Flow{Flow: f}}); err != nil {
			return err
		}
	}
	if !req.GetFollow() {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-o.stopping:
			return status.Error(codes.Unavailable, "reducer shutting down")
		case it := <-s.ch:
			resp := it.resp
			if resp == nil {
				resp = &observerv1.WatchFlowsResponse{Response: &observerv1.WatchFlowsResponse_Flow{Flow: it.flow}}
			}
			if it.flow == nil {
				src := observerv1.LostEventsSource_LOST_EVENTS_SOURCE_OBSERVER_STREAM
				if it.reducer {
					src = observerv1.LostEventsSource_LOST_EVENTS_SOURCE_REDUCER
				}
				resp.Response = &observerv1.WatchFlowsResponse_LostEvents{LostEvents: &observerv1.LostEvents{
					Source: src, NumEventsLost: it.lost,
				}}
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

// GetStatus describes the reducer.
func (o *Observer) GetStatus(context.Context, *observerv1.GetStatusRequest) (*observerv1.GetStatusResponse, error) {
	socks, flows, edges := o.engine.Counts()
	resp := &observerv1.GetStatusResponse{
		Version:      o.cfg.Version,
		StartedAt:    timestamppb.New(o.started),
		Collectors:   o.collectors.List(time.Now()),
		Series:       uint64(edges),
		Sockets:      uint64(socks),
		Flows:        uint64(flows),
		Observers:    uint32(max(o.streams.Load(), 0)),
		MaxObservers: uint32(o.cfg.MaxStreams),
		Level:        o.engine.Level().String(),
	}
	if o.gatherer != nil {
		losses, err := Losses(o.gatherer)
		if err != nil {
			o.logger.Warn("gather loss counters", "error", err)
		}
		resp.Losses = losses
	}
	return resp, nil
}
