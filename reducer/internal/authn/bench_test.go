package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// BenchmarkAuthorize is the cost the Authorizer adds to each RPC: the
// peer's SPIFFE ID parsed and checked.
func BenchmarkAuthorize(b *testing.B) {
	t := &testing.T{}
	c := newCA(t, "ca")
	_, _, cert := c.issue(t, 2, time.Now().Add(time.Hour), "spiffe://weir.local/node/node-a")
	a, err := NewAuthorizer(DefaultTrustDomain, Rules{"weir.ingest.v1.IngestService": KindNode}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}, AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.authorize(ctx, "/weir.ingest.v1.IngestService/Stream"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshake is a full TLS 1.3 mutual handshake over a pipe, with
// the reloading configuration (reload) or a fixed one (static): the
// difference is what reloading costs a new connection.
func BenchmarkHandshake(b *testing.B) {
	t := &testing.T{}
	dir := b.TempDir()
	c := newCA(t, "ca")
	sc, sk, _ := c.issue(t, 2, time.Now().Add(time.Hour))
	files := writeFiles(t, dir, sc, sk, c.pem)
	cc, ck, _ := c.issue(t, 3, time.Now().Add(time.Hour), "spiffe://weir.local/node/node-a")
	client, err := tls.X509KeyPair(cc, ck)
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewReloader(files, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pem)
	static := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{r.cur.Load().cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	clientCfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{client}, RootCAs: pool, ServerName: "127.0.0.1"}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{{"reload", r.ServerConfig()}, {"static", static}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sConn, cConn := net.Pipe()
				srv := tls.Server(sConn, tc.cfg)
				errc := make(chan error, 1)
				go func() { errc <- srv.Handshake() }()
				if err := tls.Client(cConn, clientCfg).Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				sConn.Close()
				cConn.Close()
			}
		})
	}
}
