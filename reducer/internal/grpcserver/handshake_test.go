package grpcserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// selfSigned is a server configuration requiring client certificates of
// its own CA, and a pool that trusts it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "reducer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}, pool
}

// TestHandshakeFailuresCounted: a connection that never completes its
// handshake is closed at --handshake-timeout, and one that speaks
// plaintext or has no client certificate is refused; each is counted.
func TestHandshakeFailuresCounted(t *testing.T) {
	cfg, pool := selfSigned(t)
	srv := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20, TLS: cfg, HandshakeTimeout: 300 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.RegisterService(&holdService, struct{}{})
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Shutdown(t.Context()) }()
	count := func(reason string) float64 { return testutil.ToFloat64(srv.lim.handshake.WithLabelValues(reason)) }
	waitCount := func(reason string, want float64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for count(reason) < want {
			if time.Now().After(deadline) {
				t.Fatalf("%s handshakes: %v, want %v", reason, count(reason), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Silent: closed at the timeout.
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a silent connection: %v, want EOF", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %s", d)
	}
	waitCount(handshakeTimeout, 1)

	// Plaintext HTTP/2.
	p, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := io.WriteString(p, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitCount(handshakeRefused, 1)

	// TLS without a client certificate.
	tc, err := tls.Dial("tcp", srv.Addr().String(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
	if err == nil {
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = tc.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the client's Finished
		tc.Close()
	}
	waitCount(handshakeRefused, 2)
}
