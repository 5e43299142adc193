package grpcserver

import (
	"errors"
	"net"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
)

// Reasons of weir_reducer_tls_handshake_failures_total.
const (
	handshakeTimeout = "timeout" // no complete handshake within --handshake-timeout
	handshakeRefused = "refused" // not TLS, no or an untrusted client certificate, a bad key
)

// countedCreds counts the server handshakes that fail, by reason.
type countedCreds struct {
	credentials.TransportCredentials
	failures *prometheus.CounterVec
}

func (c countedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		reason := handshakeRefused
		var ne net.Error
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			reason = handshakeTimeout
		}
		c.failures.WithLabelValues(reason).Inc()
	}
	return out, info, err
}

func (c countedCreds) Clone() credentials.TransportCredentials {
	return countedCreds{TransportCredentials: c.TransportCredentials.Clone(), failures: c.failures}
}
