package grpcserver

import (
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Limits bound what one peer, and all peers together, can hold open. A
// peer is a remote IP address. Peers on a loopback address are the
// reducer's own host (make run, weirctl, the fleet simulation of the
// tests): only the total limit applies to them.
type Limits struct {
	// MaxConns is the most TCP connections open at once; 0 for no limit.
	MaxConns int
	// MaxConnsPerPeer is the most TCP connections of one remote address;
	// 0 for no limit.
	MaxConnsPerPeer int
	// MaxStreamsPerPeer is the most streaming RPCs (ingest sessions,
	// observer and metadata streams) of one remote address at once; 0 for
	// no limit. A stream beyond it ends with RESOURCE_EXHAUSTED.
	MaxStreamsPerPeer int
	// LimitLoopback applies the limits per peer to loopback peers too.
	LimitLoopback bool
}

// Reasons of weir_reducer_connections_refused_total and of the refused
// streams.
const (
	refusedMaxConns          = "max_conns"
	refusedMaxConnsPerPeer   = "max_conns_per_peer"
	refusedMaxStreamsPerPeer = "max_streams_per_peer"
)

// limiter counts the connections and streams of each peer.
type limiter struct {
	lim Limits

	mu      sync.Mutex
	total   int
	conns   map[netip.Addr]int
	streams map[netip.Addr]int

	open      prometheus.Gauge
	refused   *prometheus.CounterVec
	handshake *prometheus.CounterVec
}

func newLimiter(lim Limits, reg prometheus.Registerer) (*limiter, error) {
	l := &limiter{
		lim:     lim,
		conns:   make(map[netip.Addr]int),
		streams: make(map[netip.Addr]int),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_connections_open",
			Help: "TCP connections open on the gRPC port.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_reducer_connections_refused_total",
			Help: "Connections closed at accept, or streams ended with RESOURCE_EXHAUSTED, by the limit they hit (max_conns, max_conns_per_peer, max_streams_per_peer).",
		}, []string{"reason"}),
		handshake: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_reducer_tls_handshake_failures_total",
			Help: "TLS handshakes on the gRPC port that failed, by reason (timeout: none complete within --handshake-timeout; refused: not TLS, no or an untrusted client certificate).",
		}, []string{"reason"}),
	}
	for _, r := range []string{refusedMaxConns, refusedMaxConnsPerPeer, refusedMaxStreamsPerPeer} {
		l.refused.WithLabelValues(r)
	}
	for _, r := range []string{handshakeTimeout, handshakeRefused} {
		l.handshake.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{l.open, l.refused, l.handshake} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// peerAddr returns the IP of a remote address, and whether limits per
// peer apply to it.
func (l *limiter) peerAddr(a net.Addr) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	ip := ap.Addr().Unmap()
	return ip, l.lim.LimitLoopback || !ip.IsLoopback()
}

// admitConn counts a new connection, or reports the limit it hits.
func (l *limiter) admitConn(remote net.Addr) (netip.Addr, bool, string) {
	ip, per := l.peerAddr(remote)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.MaxConns > 0 && l.total >= l.lim.MaxConns {
		return ip, false, refusedMaxConns
	}
	if per && l.lim.MaxConnsPerPeer > 0 && l.conns[ip] >= l.lim.MaxConnsPerPeer {
		return ip, false, refusedMaxConnsPerPeer
	}
	l.total++
	if per {
		l.conns[ip]++
	}
	l.open.Set(float64(l.total))
	return ip, per, ""
}

func (l *limiter) releaseConn(ip netip.Addr, per bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if per {
		if l.conns[ip]--; l.conns[ip] <= 0 {
			delete(l.conns, ip)
		}
	}
	l.open.Set(float64(l.total))
}

// listener closes, at accept, the connections beyond the limits.
type listener struct {
	net.Listener
	l *limiter
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, per, refused := ln.l.admitConn(c.RemoteAddr())
		if refused != "" {
			ln.l.refused.WithLabelValues(refused).Inc()
			_ = c.Close()
			continue
		}
		return &conn{Conn: c, release: sync.OnceFunc(func() { ln.l.releaseConn(ip, per) })}, nil
	}
}

// conn releases its place in the limits once, when closed.
type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	c.release()
	return c.Conn.Close()
}

// streamInterceptor ends a stream beyond its peer's limit.
func (l *limiter) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if l.lim.MaxStreamsPerPeer <= 0 {
		return handler(srv, ss)
	}
	p, ok := peer.FromContext(ss.Context())
	if !ok {
		return handler(srv, ss)
	}
	ip, per := l.peerAddr(p.Addr)
	if !per {
		return handler(srv, ss)
	}
	l.mu.Lock()
	if l.streams[ip] >= l.lim.MaxStreamsPerPeer {
		l.mu.Unlock()
		l.refused.WithLabelValues(refusedMaxStreamsPerPeer).Inc()
		return status.Errorf(codes.ResourceExhausted, "more than %d streams from %s", l.lim.MaxStreamsPerPeer, ip)
	}
	l.streams[ip]++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if l.streams[ip]--; l.streams[ip] <= 0 {
			delete(l.streams, ip)
		}
		l.mu.Unlock()
	}()
	return handler(srv, ss)
}
