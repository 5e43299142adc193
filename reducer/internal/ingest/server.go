// Package ingest serves the collectors' gRPC streams: it checks and decodes
// their messages and hands each batch to the matching engine.
package ingest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// ProtocolVersion is the wire protocol version this server speaks.
const ProtocolVersion = 1

// capabilities are the optional features this server understands; a
// session gets those that its collector also names.
var capabilities = []string{"socket_cookie", "compression_zstd", capSparseAcks}

// Server is the ingest service. It decodes requests itself (it receives
// grpcserver.Frame values), so that a malformed message gets
// INVALID_ARGUMENT.
type Server struct {
	engine  *match.Engine
	logger  *slog.Logger
	metrics *metrics
	adm     Admission
	now     func() time.Time // the reducer's clock, for the epoch bound

	stopping chan struct{}
	stopOnce sync.Once

	lossMu sync.Mutex
	loss   map[string]lossState
}

// New returns a service that feeds engine and registers its self-metrics
// with reg.
func New(engine *match.Engine, reg prometheus.Registerer, logger *slog.Logger) (*Server, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Server{
		engine:   engine,
		logger:   logger.With("component", "ingest"),
		metrics:  m,
		adm:      DefaultAdmission(),
		now:      time.Now,
		stopping: make(chan struct{}),
		loss:     make(map[string]lossState),
	}, nil
}

// Register registers the ingest service on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	desc := ingestv1.IngestService_ServiceDesc
	desc.HandlerType = (*any)(nil)
	desc.Streams = []grpc.StreamDesc{{
		StreamName:    "Stream",
		Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(*Server).serve(ss) },
		ServerStreams: true,
		ClientStreams: true,
	}}
	r.RegisterService(&desc, s)
}

// StatsHandler returns the handler that counts the bytes of the ingest
// service's received messages as they were on the wire, compressed. The
// gRPC server must be made with it.
func (s *Server) StatsHandler() stats.Handler { return wireBytes{s.metrics.receivedBytes} }

// Shutdown ends every stream with UNAVAILABLE, so that the gRPC server can
// stop gracefully. It is safe to call more than once.
func (s *Server) Shutdown(context.Context) error {
	s.stopOnce.Do(func() {
		close(s.stopping)
		s.logger.Info("stopped")
	})
	return nil
}

// wireBytes counts the bytes of the ingest service's received messages as
// they were on the wire, compressed.
type wireBytes struct{ c prometheus.Counter }

// ingestRPC marks the context of an ingest RPC.
type ingestRPC struct{}

var servicePrefix = "/" + ingestv1.IngestService_ServiceDesc.ServiceName + "/"

func (w wireBytes) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if strings.HasPrefix(info.FullMethodName, servicePrefix) {
		return context.WithValue(ctx, ingestRPC{}, true)
	}
	return ctx
}
func (w wireBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (w wireBytes) HandleConn(context.Context, stats.ConnStats)                       {}
func (w wireBytes) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if p, ok := st.(*stats.InPayload); ok && ctx.Value(ingestRPC{}) != nil {
		w.c.Add(float64(p.WireLength))
	}
}
