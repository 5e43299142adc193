package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/authn"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/ingest"
)

// Security is what the reducer trusts and how much any one peer may take.
//
// Safe defaults: without --tls-* both listeners bind to 127.0.0.1 only;
// plaintext on any other address needs --insecure-listen, which logs a
// warning and sets weir_reducer_insecure to 1. With --tls-* the gRPC port
// is mTLS only and every peer must present a certificate of this trust
// domain naming what it is (see authn.Kind): a collector
// spiffe://<trust-domain>/node/<node-name>, which may open ingest sessions
// for that node only; the k8s-watcher spiffe://<trust-domain>/k8s-watcher,
// which may push metadata only; an observer (weirctl, a UI)
// spiffe://<trust-domain>/observer/<name>, which may read the Observer API
// only. The HTTP port (read-only: /metrics, health, /api/v1/map) stays
// plaintext for Prometheus.
type Security struct {
	InsecureListen bool
	TrustDomain    string
	Admission      ingest.Admission
	Limits         grpcserver.Limits
	// HandshakeTimeout bounds a connection's TLS and HTTP/2 handshake.
	HandshakeTimeout time.Duration
}

func defaultSecurity() Security {
	return Security{
		TrustDomain: authn.DefaultTrustDomain,
		Admission:   ingest.DefaultAdmission(),
		Limits: grpcserver.Limits{
			MaxConns:          16384,
			MaxConnsPerPeer:   32,
			MaxStreamsPerPeer: 64,
		},
		HandshakeTimeout: 10 * time.Second,
	}
}

// bind declares the flags of s on fs.
func (s *Security) bind(fs *flag.FlagSet) {
	fs.BoolVar(&s.InsecureListen, "insecure-listen", s.InsecureListen, "without --tls-*, listen in plaintext beyond loopback (default addresses :7000 and :7010): anyone who reaches the port can send node data; logs a warning and sets weir_reducer_insecure")
	fs.StringVar(&s.TrustDomain, "trust-domain", s.TrustDomain, "SPIFFE trust domain of the peers' certificates under mTLS: spiffe://<trust-domain>/node/<node>, /k8s-watcher, /observer/<name>")
	a := &s.Admission
	fs.DurationVar(&a.HelloTimeout, "hello-timeout", a.HelloTimeout, "a collector stream that sends no hello within this ends with DEADLINE_EXCEEDED; 0: no limit")
	fs.DurationVar(&a.MaxEpochSkew, "max-epoch-skew", a.MaxEpochSkew, "a hello whose epoch (the collector's clock in ns) is further ahead of the reducer's clock is refused (epoch_in_future); 0: no bound")
	fs.IntVar(&a.MaxSessionSockets, "max-session-sockets", a.MaxSessionSockets, "live sockets one collector session may announce; beyond, its stream ends with RESOURCE_EXHAUSTED; 0: no limit")
	fs.IntVar(&a.MaxSessionProcesses, "max-session-processes", a.MaxSessionProcesses, "live processes one collector session may announce; beyond, its stream ends with RESOURCE_EXHAUSTED; 0: no limit")
	l := &s.Limits
	fs.IntVar(&l.MaxConns, "max-conns", l.MaxConns, "TCP connections open at once on the gRPC port; beyond, new ones are closed at accept; 0: no limit")
	fs.IntVar(&l.MaxConnsPerPeer, "max-conns-per-peer", l.MaxConnsPerPeer, "TCP connections of one remote IP (loopback exempt); 0: no limit")
	fs.IntVar(&l.MaxStreamsPerPeer, "max-streams-per-peer", l.MaxStreamsPerPeer, "streams of one remote IP at once (loopback exempt); beyond, RESOURCE_EXHAUSTED; 0: no limit")
	fs.DurationVar(&s.HandshakeTimeout, "handshake-timeout", s.HandshakeTimeout, "time a new connection has for its TLS and HTTP/2 handshake")
}

// listenAddrs fills in the default addresses: loopback in plaintext,
// every interface with TLS or --insecure-listen.
func (s *Security) listenAddrs(grpcAddr, httpAddr string, tls bool) (string, string) {
	host := "127.0.0.1"
	if tls || s.InsecureListen {
		host = ""
	}
	if grpcAddr == "" {
		grpcAddr = net.JoinHostPort(host, "7000")
	}
	if httpAddr == "" {
		httpAddr = net.JoinHostPort(host, "7010")
	}
	return grpcAddr, httpAddr
}

// validate checks the flags of s against the listen addresses.
func (s *Security) validate(grpcAddr, httpAddr string, tls bool) error {
	if !s.InsecureListen {
		addrs := []struct{ flag, addr string }{{"--grpc-addr", grpcAddr}, {"--http-addr", httpAddr}}
		if tls {
			addrs = addrs[:0] // the gRPC port is mTLS; the HTTP port is read-only
		}
		for _, a := range addrs {
			if !loopback(a.addr) {
				return fmt.Errorf("%s %s: plaintext beyond loopback lets anyone send node data; give --tls-cert/--tls-key/--tls-ca, a loopback address, or --insecure-listen", a.flag, a.addr)
			}
		}
	}
	if !authn.ValidName(s.TrustDomain) {
		return fmt.Errorf("--trust-domain %q: want a DNS name in lower case", s.TrustDomain)
	}
	a := s.Admission
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--hello-timeout", a.HelloTimeout}, {"--max-epoch-skew", a.MaxEpochSkew}, {"--handshake-timeout", s.HandshakeTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s %s: must not be negative", d.flag, d.v)
		}
	}
	for _, n := range []struct {
		flag string
		v    int
	}{{"--max-session-sockets", a.MaxSessionSockets}, {"--max-session-processes", a.MaxSessionProcesses},
		{"--max-conns", s.Limits.MaxConns}, {"--max-conns-per-peer", s.Limits.MaxConnsPerPeer}, {"--max-streams-per-peer", s.Limits.MaxStreamsPerPeer}} {
		if n.v < 0 {
			return fmt.Errorf("%s %d: must not be negative", n.flag, n.v)
		}
	}
	return nil
}

// insecure reports whether plaintext listens beyond loopback.
func (s *Security) insecure(tls bool) bool { return s.InsecureListen && !tls }

// loopback reports whether addr's host is a loopback address or
// "localhost"; an empty host (every interface) is not.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// grpcConfig is the gRPC server's configuration: mTLS with certificates
// that reload when their files change and an identity check on every RPC,
// or plaintext (on loopback unless --insecure-listen); the limits in both.
func grpcConfig(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (grpcserver.Config, error) {
	sec := cfg.Security
	gcfg := grpcserver.Config{
		Addr:             cfg.GRPCAddr,
		MaxMessageBytes:  cfg.MaxMessageBytes,
		Limits:           sec.Limits,
		HandshakeTimeout: sec.HandshakeTimeout,
		Registerer:       reg,
	}
	insecure := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "weir_reducer_insecure",
		Help: "1 when the gRPC port listens in plaintext beyond loopback (--insecure-listen without --tls-*): anyone who reaches it can send node data.",
	})
	if err := reg.Register(insecure); err != nil {
		return gcfg, err
	}
	if sec.insecure(cfg.tls()) {
		insecure.Set(1)
		logger.Warn("plaintext gRPC beyond loopback (--insecure-listen): anyone who reaches the port can send node data and read flows; use --tls-cert/--tls-key/--tls-ca",
			"grpc_addr", cfg.GRPCAddr, "http_addr", cfg.HTTPAddr)
	}
	if !cfg.tls() {
		return gcfg, nil
	}
	certs, err := authn.NewReloader(authn.Files{Cert: cfg.TLSCert, Key: cfg.TLSKey, CA: cfg.TLSCA}, "weir_reducer", reg)
	if err != nil {
		return gcfg, fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
	}
	az, err := authn.NewAuthorizer(sec.TrustDomain, authn.Rules{
		ingestv1.IngestService_ServiceDesc.ServiceName:     authn.KindNode,
		metadatav1.MetadataService_ServiceDesc.ServiceName: authn.KindWatcher,
		observerv1.ObserverService_ServiceDesc.ServiceName: authn.KindObserver,
	}, reg)
	if err != nil {
		return gcfg, err
	}
	gcfg.TLS = certs.ServerConfig()
	gcfg.StreamInterceptors = []grpc.StreamServerInterceptor{az.Stream}
	gcfg.UnaryInterceptors = []grpc.UnaryServerInterceptor{az.Unary}
	logger.Info("mTLS", "trust_domain", sec.TrustDomain, "certificate_expires", certs.Leaf().NotAfter)
	return gcfg, nil
}
