package metadata

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// Service is the metadata gRPC service: it applies a watcher's stream to the
// cache and answers lookups.
type Service struct {
	metadatav1.UnimplementedMetadataServiceServer

	cache  *Cache
	logger *slog.Logger

	mu      sync.Mutex
	cluster string
	epoch   uint64 // of the last change applied; 0 while a snapshot is incomplete
	version uint64
	active  context.CancelFunc // the current stream's
	streams map[*stream]struct{}
	closed  bool

	synced     chan struct{} // closed at the first snapshot applied
	syncedOnce sync.Once

	m serviceMetrics
}

type serviceMetrics struct {
	streams      prometheus.Gauge
	deltas       prometheus.Counter
	snapshots    prometheus.Counter
	swept        prometheus.Counter
	coalesced    prometheus.Counter
	errors       *prometheus.CounterVec
	applySeconds prometheus.Gauge
	snapObjects  prometheus.Gauge
}

type stream struct{ cancel context.CancelFunc }

// Synced is closed once the first snapshot of any watcher is applied.
func (s *Service) Synced() <-chan struct{} { return s.synced }

// New returns a service that applies streams to cache, with its metrics on
// reg.
func New(cache *Cache, reg prometheus.Registerer, logger *slog.Logger) (*Service, error) {
	s := &Service{cache: cache, logger: logger.With("component", "metadata"), streams: make(map[*stream]struct{}), synced: make(chan struct{})}
	s.m = serviceMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_reducer_metadata_streams",
			Help: "Open metadata streams from k8s-watchers."}),
		deltas: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_reducer_metadata_deltas_total",
			Help: "Object states and deletions applied, snapshots included."}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_reducer_metadata_snapshots_total",
			Help: "Complete snapshots applied."}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_reducer_metadata_swept_total",
			Help: "Objects deleted because a snapshot no longer named them."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_reducer_metadata_coalesced_total",
			Help: "Changes the watcher replaced by later ones before sending them, as it reports in-band: states this reducer never saw because it was slower than the changes."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_reducer_metadata_stream_errors_total",
			Help: "Metadata streams that ended with an error, by reason."}, []string{"reason"}),
		applySeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_reducer_metadata_snapshot_apply_seconds",
			Help: "Time to apply the last snapshot, from its start to its end."}),
		snapObjects: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_reducer_metadata_snapshot_objects",
			Help: "Objects in the last snapshot."}),
	}
	objects := prometheus.NewDesc("weir_reducer_metadata_objects", "Objects in the metadata cache, by kind.", []string{"kind"}, nil)
	invalid := prometheus.NewDesc("weir_reducer_metadata_invalid_addresses_total", "Addresses in metadata that did not parse.", nil, nil)
	for _, c := range []prometheus.Collector{s.m.streams, s.m.deltas, s.m.snapshots, s.m.swept, s.m.coalesced, s.m.errors, s.m.applySeconds, s.m.snapObjects,
		collectorFunc{descs: []*prometheus.Desc{objects, invalid}, collect: func(ch chan<- prometheus.Metric) {
			p, sv, n := cache.Counts()
			ch <- prometheus.MustNewConstMetric(objects, prometheus.GaugeValue, float64(p), KindPod)
			ch <- prometheus.MustNewConstMetric(objects, prometheus.GaugeValue, float64(sv), KindService)
			ch <- prometheus.MustNewConstMetric(objects, prometheus.GaugeValue, float64(n), KindNode)
			ch <- prometheus.MustNewConstMetric(invalid, prometheus.CounterValue, float64(cache.Invalid()))
		}},
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Register registers the service on a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	metadatav1.RegisterMetadataServiceServer(r, s)
}

// Shutdown ends every stream; it is idempotent.
func (s *Service) Shutdown(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for st := range s.streams {
		st.cancel()
	}
	return nil
}

// Lookup answers what an address is.
func (s *Service) Lookup(_ context.Context, req *metadatav1.LookupRequest) (*metadatav1.LookupResponse, error) {
	a, err := netip.ParseAddr(req.GetIp())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ip %q: %v", req.GetIp(), err)
	}
	w, ok := s.cache.Lookup(a)
	if !ok {
		return &metadatav1.LookupResponse{}, nil
	}
	return &metadatav1.LookupResponse{Found: true, Kind: w.Kind, Name: w.Name, Namespace: w.Namespace,
		Zone: w.Zone, Node: w.Node, Pod: w.Pod}, nil
}

// Stream applies one watcher's stream.
func (s *Service) Stream(ss grpc.BidiStreamingServer[metadatav1.StreamRequest, metadatav1.StreamResponse]) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	first, err := ss.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		s.m.errors.WithLabelValues("no_hello").Inc()
		return status.Error(codes.InvalidArgument, "first message must be a hello")
	}
	if hello.GetEpoch() == 0 {
		s.m.errors.WithLabelValues("bad_hello").Inc()
		return status.Error(codes.InvalidArgument, "hello: epoch must not be zero")
	}
	logger := s.logger.With("cluster", hello.GetCluster(), "watcher", hello.GetWatcher(), "epoch", hello.GetEpoch())

	// The newest stream of a cluster wins: a new leader replaces the old.
	st := &stream{cancel: cancel}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "reducer is shutting down")
	}
	if s.active != nil {
		s.active()
	}
	s.active = cancel
	s.streams[st] = struct{}{}
	if s.cluster != "" && s.cluster != hello.GetCluster() {
		logger.Warn("watcher of another cluster: its view replaces the current one", "previous", s.cluster)
		s.epoch, s.version = 0, 0
	}
	s.cluster = hello.GetCluster()
	welcome := &metadatav1.Welcome{Epoch: s.epoch, Version: s.version}
	s.mu.Unlock()
	s.m.streams.Inc()
	defer func() {
		s.m.streams.Dec()
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	if err := ss.Send(&metadatav1.StreamResponse{Kind: &metadatav1.StreamResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	logger.Info("watcher connected", "have_epoch", welcome.GetEpoch(), "have_version", welcome.GetVersion())

	reqs := make(chan *metadatav1.StreamRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := ss.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		keep      map[ID]struct{} // during a snapshot
		snapStart time.Time
		snapEpoch uint64
		snapN     int
	)
	for {
		var r *metadatav1.StreamRequest
		select {
		case <-ctx.Done():
			if ss.Context().Err() == nil {
				logger.Info("stream replaced or reducer stopping")
				return status.Error(codes.Aborted, "replaced by a newer stream of the cluster")
			}
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				logger.Info("watcher disconnected")
				return nil
			}
			s.m.errors.WithLabelValues("receive").Inc()
			logger.Warn("watcher stream failed", "error", err)
			return err
		case r = <-reqs:
		}
		switch k := r.GetKind().(type) {
		case *metadatav1.StreamRequest_SnapshotStart:
			keep = make(map[ID]struct{}, k.SnapshotStart.GetObjects())
			snapStart, snapEpoch, snapN = time.Now(), k.SnapshotStart.GetEpoch(), 0
			s.mu.Lock()
			s.epoch, s.version = 0, 0 // incomplete until the end
			s.mu.Unlock()
		case *metadatav1.StreamRequest_Deltas:
			ds := k.Deltas.GetDeltas()
			s.cache.ApplyAll(ds)
			s.m.coalesced.Add(float64(k.Deltas.GetDropped()))
			s.m.deltas.Add(float64(len(ds)))
			if keep != nil {
				for _, d := range ds {
					if id, ok := IDOf(d); ok {
						keep[id] = struct{}{}
					}
				}
				snapN += len(ds)
				continue
			}
			s.mu.Lock()
			if s.epoch == hello.GetEpoch() {
				s.version = k.Deltas.GetVersion()
			}
			s.mu.Unlock()
			if err := ss.Send(&metadatav1.StreamResponse{Kind: &metadatav1.StreamResponse_Ack{Ack: &metadatav1.Ack{Version: k.Deltas.GetVersion()}}}); err != nil {
				return err
			}
		case *metadatav1.StreamRequest_SnapshotEnd:
			if keep == nil {
				s.m.errors.WithLabelValues("bad_message").Inc()
				return status.Error(codes.InvalidArgument, "snapshot end without a start")
			}
			swept := s.cache.Sweep(keep)
			took := time.Since(snapStart)
			keep = nil
			s.m.swept.Add(float64(swept))
			s.m.snapshots.Inc()
			s.m.applySeconds.Set(took.Seconds())
			s.m.snapObjects.Set(float64(snapN))
			s.mu.Lock()
			s.epoch, s.version = snapEpoch, k.SnapshotEnd.GetVersion()
			s.mu.Unlock()
			logger.Info("snapshot applied", "objects", snapN, "swept", swept, "took", took.Round(time.Microsecond), "version", k.SnapshotEnd.GetVersion())
			s.syncedOnce.Do(func() { close(s.synced) })
			if err := ss.Send(&metadatav1.StreamResponse{Kind: &metadatav1.StreamResponse_Ack{Ack: &metadatav1.Ack{Version: k.SnapshotEnd.GetVersion()}}}); err != nil {
				return err
			}
		default:
			s.m.errors.WithLabelValues("bad_message").Inc()
			return status.Error(codes.InvalidArgument, "expected a snapshot or deltas")
		}
	}
}

// collectorFunc is a prometheus.Collector from functions.
type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
