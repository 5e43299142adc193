// Package ingest serves the collectors' gRPC streams: it checks and decodes
// their messages and hands each batch to the matching engine.
package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // collectors send gzip-compressed streams
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// ProtocolVersion is the wire protocol version this server speaks.
const ProtocolVersion = 1

// Config tunes the server.
type Config struct {
	// Addr is the address to listen on, e.g. ":7000".
	Addr string
	// MaxMessageBytes is the largest message accepted; a larger one ends its
	// stream with RESOURCE_EXHAUSTED.
	MaxMessageBytes int
	// TLS, when set, makes the server require and verify client
	// certificates. Plaintext when nil.
	TLS *tls.Config
}

// Server is the ingest gRPC server. It decodes requests itself (see
// frameCodec), so that a malformed message gets INVALID_ARGUMENT.
type Server struct {
	ingestv1.UnimplementedIngestServiceServer

	cfg     Config
	engine  *match.Engine
	logger  *slog.Logger
	metrics *metrics
	grpc    *grpc.Server

	lis      net.Listener
	ready    atomic.Bool
	stopping chan struct{}
	errc     chan error
	stopOnce sync.Once

	lossMu sync.Mutex
	loss   map[string]lossState
}

// New returns a server that feeds engine and registers its self-metrics
// with reg.
func New(cfg Config, engine *match.Engine, reg prometheus.Registerer, logger *slog.Logger) (*Server, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		engine:   engine,
		logger:   logger.With("component", "ingest"),
		metrics:  m,
		stopping: make(chan struct{}),
		errc:     make(chan error, 1),
		loss:     make(map[string]lossState),
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.StatsHandler(wireBytes{m.receivedBytes}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	opts = append(opts, grpc.ForceServerCodec(frameCodec{}))
	s.grpc = grpc.NewServer(opts...)
	s.grpc.RegisterService(serviceDesc(), s)
	return s, nil
}

// Start listens and serves in the background. It returns once the listener
// is up.
func (s *Server) Start(ctx context.Context) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Addr, err)
	}
	s.lis = lis
	go func() {
		if err := s.grpc.Serve(lis); err != nil {
			s.errc <- fmt.Errorf("serve grpc: %w", err)
		}
	}()
	s.ready.Store(true)
	s.logger.Info("listening", "addr", lis.Addr().String(), "tls", s.cfg.TLS != nil)
	return nil
}

// Addr returns the listening address; nil before Start.
func (s *Server) Addr() net.Addr {
	if s.lis == nil {
		return nil
	}
	return s.lis.Addr()
}

// Ready reports whether the listener is up.
func (s *Server) Ready() bool { return s.ready.Load() }

// Err delivers an error if serving fails.
func (s *Server) Err() <-chan error { return s.errc }

// Shutdown ends every stream with UNAVAILABLE and stops the server, at the
// latest when ctx is done. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.ready.Store(false)
		close(s.stopping)
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			s.grpc.Stop()
			<-done
		}
		s.logger.Info("stopped")
	})
	return nil
}

// ServerTLS loads the server's certificate and the CA that client
// certificates must chain to.
func ServerTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load key pair: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("read ca: no certificate in PEM")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// wireBytes counts the bytes of received messages as they were on the
// wire, compressed.
type wireBytes struct{ c prometheus.Counter }

func (w wireBytes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (w wireBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (w wireBytes) HandleConn(context.Context, stats.ConnStats)                       {}
func (w wireBytes) HandleRPC(_ context.Context, st stats.RPCStats) {
	if p, ok := st.(*stats.InPayload); ok {
		w.c.Add(float64(p.WireLength))
	}
}
