// Package grpcserver owns the reducer's one gRPC server, on which ingest and
// later the metadata and observer services register.
package grpcserver

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
)

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
	// Limits bound the connections and streams of each peer.
	Limits Limits
	// HandshakeTimeout bounds a new connection's TLS and HTTP/2
	// handshake; grpc's default (120 s) when zero.
	HandshakeTimeout time.Duration
	// StreamInterceptors and UnaryInterceptors run, in order, before every
	// service's handler, after the limits (e.g. the authn.Authorizer).
	StreamInterceptors []grpc.StreamServerInterceptor
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	// Registerer takes the metrics of the limits; none when nil.
	Registerer prometheus.Registerer
}

// Buffer sizes of each connection.
const (
	connReadBuffer  = 8 << 10
	connWriteBuffer = 8 << 10
	// connWindow is each connection's and stream's flow-control window: a
	// batch is a few kilobytes, and a snapshot of a large node a few
	// megabytes, which this window carries at 256 MiB/s over a 1 ms
	// round trip.
	connWindow = 256 << 10
)

// Server is the gRPC server. It is a grpc.ServiceRegistrar: services
// register before Start.
type Server struct {
	cfg    Config
	logger *slog.Logger
	grpc   *grpc.Server

	lis   net.Listener
	lim   *limiter
	ready atomic.Bool
	errc  chan error
	once  sync.Once
}

// New returns a server whose every RPC goes through handlers, e.g. a
// service's wire-bytes counter.
func New(cfg Config, logger *slog.Logger, handlers ...stats.Handler) *Server {
	logger = logger.With("component", "grpc")
	lim, err := newLimiter(cfg.Limits, cfg.Registerer)
	if err != nil {
		logger.Warn("limit metrics not registered", "error", err)
		lim, _ = newLimiter(cfg.Limits, nil)
	}
	opts := []grpc.ServerOption{
		// Keepalive enforcement: a client pinging more often than every
		// 10 s gets GOAWAY (too_many_pings) and its connection closes.
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ForceServerCodecV2(newCodec()),
		// A thousand collectors' connections each send a batch of a few
		// kilobytes per interval and get a few bytes of ack: small read
		// buffers, and small write buffers (gRPC takes them from a shared
		// pool only while writing), instead of 64 KiB per connection for
		// its life.
		grpc.ReadBufferSize(connReadBuffer),
		grpc.WriteBufferSize(connWriteBuffer),
		// Fixed flow-control windows. gRPC's dynamic windows estimate each
		// connection's bandwidth with a ping after the first data frame
		// that follows the last ping's ack: with a batch per interval,
		// every batch cost a window update, a ping and the read of its
		// ack, besides the batch and its ack. A fixed window also bounds
		// what a connection can buffer in the reducer.
		grpc.StaticStreamWindowSize(connWindow),
		grpc.StaticConnWindowSize(connWindow),
	}
	for _, h := range handlers {
		opts = append(opts, grpc.StatsHandler(h))
	}
	if cfg.HandshakeTimeout > 0 {
		opts = append(opts, grpc.ConnectionTimeout(cfg.HandshakeTimeout))
	}
	opts = append(opts,
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{lim.streamInterceptor}, cfg.StreamInterceptors...)...),
		grpc.ChainUnaryInterceptor(cfg.UnaryInterceptors...))
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(countedCreds{TransportCredentials: credentials.NewTLS(cfg.TLS), failures: lim.handshake}))
	}
	return &Server{
		cfg:    cfg,
		logger: logger,
		lim:    lim,
		grpc:   grpc.NewServer(opts...),
		errc:   make(chan error, 1),
	}
}

// RegisterService registers a service; see grpc.ServiceRegistrar.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
}

// Start listens and serves in the background. It returns once the listener
// is up.
func (s *Server) Start(ctx context.Context) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Addr, err)
	}
	lis = &listener{Listener: lis, l: s.lim}
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

// Shutdown stops the server, letting RPCs in flight finish until ctx is
// done and then cancelling them. Services that hold long-lived streams end
// them first (see ingest.Server.Shutdown). It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.once.Do(func() {
		s.ready.Store(false)
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
