// Package stream sends the watcher's view to the reducer: a snapshot, then
// the changes after it, resuming after a reconnect where the reducer left
// off.
package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/stats"

	"github.com/weir-project/weir/k8s-watcher/internal/view"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// Config tunes the sender.
type Config struct {
	// Addr is the reducer's gRPC address.
	Addr string
	// Cluster and Watcher go in the Hello.
	Cluster, Watcher string
	// TLS, when set, is the client's mTLS configuration.
	TLS *tls.Config
	// Chunk is the most objects per message.
	Chunk int
	// MaxBackoff caps the wait between reconnects.
	MaxBackoff time.Duration
}

// Sender streams a view.
type Sender struct {
	cfg    Config
	view   *view.View
	logger *slog.Logger

	snapshots  *prometheus.CounterVec
	deltas     prometheus.Counter
	wireBytes  prometheus.Counter
	reconnects prometheus.Counter
	connected  prometheus.Gauge
	acked      prometheus.Gauge
	wire       atomic.Uint64
}

// New returns a sender of v whose metrics register on reg.
func New(cfg Config, v *view.View, reg prometheus.Registerer, logger *slog.Logger) (*Sender, error) {
	if cfg.Chunk <= 0 {
		cfg.Chunk = 500
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	s := &Sender{
		cfg: cfg, view: v, logger: logger.With("component", "stream"),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_watcher_snapshots_total",
			Help: "Full snapshots sent to the reducer, by reason (new: the reducer had another epoch or nothing; behind: deletions it missed were forgotten; requested: it asked)."}, []string{"reason"}),
		deltas: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_watcher_deltas_sent_total",
			Help: "Object states and deletions sent to the reducer, snapshots included."}),
		wireBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_watcher_stream_wire_bytes_total",
			Help: "Bytes sent to the reducer on the wire (compressed)."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_watcher_stream_errors_total",
			Help: "Streams to the reducer that ended with an error."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_watcher_stream_connected",
			Help: "1 while a stream to the reducer is open."}),
		acked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_watcher_acked_version",
			Help: "The last version of the view the reducer confirmed."}),
	}
	for _, c := range []prometheus.Collector{s.snapshots, s.deltas, s.wireBytes, s.reconnects, s.connected, s.acked} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register stream metrics: %w", err)
		}
	}
	return s, nil
}

// WireBytes returns the bytes sent on the wire so far.
func (s *Sender) WireBytes() uint64 { return s.wire.Load() }

// Run streams until ctx is done, reconnecting with backoff and jitter.
func (s *Sender) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if s.cfg.TLS != nil {
		creds = credentials.NewTLS(s.cfg.TLS)
	}
	conn, err := grpc.NewClient(s.cfg.Addr, grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(wireCounter{s}),
		grpc.WithDefaultCallOptions(grpc.UseCompressor(gzip.Name), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		return fmt.Errorf("dial %s: %w", s.cfg.Addr, err)
	}
	defer conn.Close()
	client := metadatav1.NewMetadataServiceClient(conn)
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := s.session(ctx, client)
		s.connected.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		s.reconnects.Inc()
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		s.logger.Warn("stream ended", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// session runs one stream.
func (s *Sender) session(ctx context.Context, client metadatav1.MetadataServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.Stream(ctx)
	if err != nil {
		return err
	}
	epoch := s.view.Epoch()
	if err := st.Send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Hello{Hello: &metadatav1.Hello{
		Cluster: s.cfg.Cluster, Watcher: s.cfg.Watcher, Epoch: epoch, Version: s.view.Version()}}}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	resp, err := st.Recv()
	if err != nil {
		return fmt.Errorf("receive welcome: %w", err)
	}
	wel := resp.GetWelcome()
	if wel == nil {
		return errors.New("reducer did not answer with a welcome")
	}
	s.connected.Set(1)
	resync := make(chan string, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch {
			case r.GetAck() != nil:
				s.acked.Set(float64(r.GetAck().GetVersion()))
			case r.GetResync() != nil:
				select {
				case resync <- r.GetResync().GetReason():
				default:
				}
			}
		}
	}()

	var sent uint64
	if wel.GetEpoch() == epoch && epoch != 0 {
		if _, ok, _ := s.view.Since(wel.GetVersion(), 0); ok {
			sent = wel.GetVersion()
			s.logger.Info("stream resumed", "version", sent)
		} else {
			sent, err = s.snapshot(st, "behind")
		}
	} else {
		sent, err = s.snapshot(st, "new")
	}
	if err != nil {
		return err
	}
	for {
		for {
			ds, ok, coalesced := s.view.Since(sent, s.cfg.Chunk)
			if !ok {
				if sent, err = s.snapshot(st, "behind"); err != nil {
					return err
				}
				continue
			}
			if len(ds) == 0 {
				break
			}
			v := ds[len(ds)-1].GetVersion()
			if err := st.Send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Deltas{Deltas: &metadatav1.Deltas{
				Deltas: ds, Version: v, Dropped: coalesced}}}); err != nil {
				return fmt.Errorf("send deltas: %w", err)
			}
			s.deltas.Add(float64(len(ds)))
			sent = v
			s.view.MarkSent(sent)
		}
		select {
		case <-ctx.Done():
			_ = st.CloseSend()
			return nil
		case err := <-recvErr:
			return fmt.Errorf("receive: %w", err)
		case reason := <-resync:
			s.logger.Info("reducer asked for a snapshot", "reason", reason)
			if sent, err = s.snapshot(st, "requested"); err != nil {
				return err
			}
		case <-s.view.Changed():
		}
	}
}

// snapshot sends every live object and returns the version it shows.
func (s *Sender) snapshot(st grpc.BidiStreamingClient[metadatav1.StreamRequest, metadatav1.StreamResponse], reason string) (uint64, error) {
	ds, version := s.view.Snapshot()
	start := time.Now()
	wire := s.wire.Load()
	if err := st.Send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotStart{SnapshotStart: &metadatav1.SnapshotStart{
		Epoch: s.view.Epoch(), Version: version, Objects: uint32(len(ds))}}}); err != nil {
		return 0, fmt.Errorf("send snapshot start: %w", err)
	}
	for i := 0; i < len(ds); i += s.cfg.Chunk {
		chunk := ds[i:min(i+s.cfg.Chunk, len(ds))]
		if err := st.Send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Deltas{Deltas: &metadatav1.Deltas{
			Deltas: chunk, Version: version}}}); err != nil {
			return 0, fmt.Errorf("send snapshot: %w", err)
		}
	}
	if err := st.Send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotEnd{SnapshotEnd: &metadatav1.SnapshotEnd{
		Version: version}}}); err != nil {
		return 0, fmt.Errorf("send snapshot end: %w", err)
	}
	s.snapshots.WithLabelValues(reason).Inc()
	s.deltas.Add(float64(len(ds)))
	s.view.MarkSent(version)
	s.logger.Info("snapshot sent", "reason", reason, "objects", len(ds), "version", version,
		"wire_bytes", s.wire.Load()-wire, "took", time.Since(start).Round(time.Millisecond))
	return version, nil
}

// wireCounter counts the bytes sent on the wire.
type wireCounter struct{ s *Sender }

func (wireCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (wireCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (wireCounter) HandleConn(context.Context, stats.ConnStats)                       {}
func (w wireCounter) HandleRPC(_ context.Context, st stats.RPCStats) {
	if p, ok := st.(*stats.OutPayload); ok {
		w.s.wire.Add(uint64(p.WireLength))
		w.s.wireBytes.Add(float64(p.WireLength))
	}
}
