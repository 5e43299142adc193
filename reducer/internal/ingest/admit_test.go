package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/reducer/internal/authn"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/match"
)

// idPKI is a CA and its certificates with SPIFFE IDs, as weirctl certs
// writes them.
type idPKI struct {
	dir  string
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newIDPKI(t *testing.T) *idPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &idPKI{dir: t.TempDir(), ca: ca, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	if err := os.WriteFile(filepath.Join(p.dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var serialN int64 = 10

// issue returns a key pair whose certificate carries id as its URI SAN
// (none when empty), and writes it as name.pem and name-key.pem.
func (p *idPKI) issue(t *testing.T, name, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serialN++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serialN), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	if id != "" {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	for f, b := range map[string][]byte{name + ".pem": certPEM, name + "-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(p.dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// serveAdmission starts ingest as main wires it: with adm, and with mTLS,
// identities and the authorizer when p is not nil.
func serveAdmission(t *testing.T, p *idPKI, adm Admission) *testServer {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewPedanticRegistry()
	engine, err := match.New(match.Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Loopback: true}, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(engine, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetAdmission(adm)
	gcfg := grpcserver.Config{Addr: "127.0.0.1:0", MaxMessageBytes: 4 << 20, Registerer: reg}
	if p != nil {
		p.issue(t, "reducer", "")
		r, err := authn.NewReloader(authn.Files{Cert: filepath.Join(p.dir, "reducer.pem"), Key: filepath.Join(p.dir, "reducer-key.pem"), CA: filepath.Join(p.dir, "ca.pem")}, "weir_reducer", reg)
		if err != nil {
			t.Fatal(err)
		}
		az, err := authn.NewAuthorizer(authn.DefaultTrustDomain, authn.Rules{
			ingestv1.IngestService_ServiceDesc.ServiceName:     authn.KindNode,
			metadatav1.MetadataService_ServiceDesc.ServiceName: authn.KindWatcher,
		}, reg)
		if err != nil {
			t.Fatal(err)
		}
		gcfg.TLS = r.ServerConfig()
		gcfg.StreamInterceptors = []grpc.StreamServerInterceptor{az.Stream}
		gcfg.UnaryInterceptors = []grpc.UnaryServerInterceptor{az.Unary}
	}
	gs := grpcserver.New(gcfg, logger, srv.StatsHandler())
	srv.Register(gs)
	if err := gs.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = gs.Shutdown(ctx)
	})
	return &testServer{srv: srv, grpc: gs, engine: engine, reg: reg}
}

// client returns a connection to ts presenting cert.
func (p *idPKI) client(t *testing.T, ts *testServer, cert tls.Certificate) *testServer {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+ts.grpc.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: p.pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := *ts
	c.conn = conn
	return &c
}

func rejected(t *testing.T, ts *testServer, r reason) float64 {
	t.Helper()
	return testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues(string(r)))
}

// TestNodeIdentity: under mTLS a certificate for node A cannot open a
// session as node B, nor hijack A's session with a huge epoch; other
// identities cannot call ingest at all. The real collector's acks keep
// coming throughout.
func TestNodeIdentity(t *testing.T) {
	p := newIDPKI(t)
	ts := serveAdmission(t, p, DefaultAdmission())
	nodeA := p.issue(t, "node-a", "spiffe://weir.local/node/node-a")
	nodeB := p.issue(t, "node-b", "spiffe://weir.local/node/node-b")
	observer := p.issue(t, "observer", "spiffe://weir.local/observer/weirctl")
	watcher := p.issue(t, "watcher", "spiffe://weir.local/k8s-watcher")
	foreign := p.issue(t, "foreign", "spiffe://other.domain/node/node-a")
	bare := p.issue(t, "bare", "")

	real := &healthy{s: p.client(t, ts, nodeA).open(t)}
	welcomed(t, real.s, "node-a", uint64(time.Now().UnixNano()))
	real.send(t)

	tests := []struct {
		name   string
		cert   tls.Certificate
		node   string
		epoch  uint64
		code   codes.Code
		reason reason // counted by ingest, if any
		denied string // counted by the authorizer, if any
	}{
		{"node b as node a", nodeB, "node-a", 1, codes.PermissionDenied, reasonNodeMismatch, ""},
		{"node b as node a, huge epoch", nodeB, "node-a", math.MaxUint64, codes.PermissionDenied, reasonNodeMismatch, ""},
		{"observer", observer, "node-a", math.MaxUint64, codes.PermissionDenied, "", authn.DeniedWrongKind},
		{"k8s-watcher", watcher, "node-a", math.MaxUint64, codes.PermissionDenied, "", authn.DeniedWrongKind},
		{"other trust domain", foreign, "node-a", math.MaxUint64, codes.PermissionDenied, "", authn.DeniedNoIdentity},
		{"no spiffe id", bare, "node-a", math.MaxUint64, codes.PermissionDenied, "", authn.DeniedNoIdentity},
		{"node a, huge epoch", nodeA, "node-a", math.MaxUint64, codes.FailedPrecondition, reasonEpochInFuture, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = rejected(t, ts, tc.reason)
			}
			err := sendAll(p.client(t, ts, tc.cert), hello(tc.node, tc.epoch), batch(&ingestv1.Batch{Sequence: 1}))(t)
			if status.Code(err) != tc.code {
				t.Fatalf("stream ended with %v, want %v", err, tc.code)
			}
			if tc.reason != "" {
				waitCount(t, func() float64 { return rejected(t, ts, tc.reason) }, before+1)
			}
			if tc.denied != "" {
				if got := counterValue(t, ts.reg, "weir_reducer_auth_denied_total", tc.denied); got < 1 {
					t.Errorf("auth denied %s = %v", tc.denied, got)
				}
			}
			real.send(t) // the real collector is undisturbed
		})
	}
	// Node B's own certificate opens node B's session.
	b := &healthy{s: p.client(t, ts, nodeB).open(t)}
	welcomed(t, b.s, "node-b", uint64(time.Now().UnixNano()))
	b.send(t)
	real.send(t)
}

// counterValue returns the value of a counter with a reason label in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{reason=%q}", name, reason)
	return 0
}

// waitCount waits for a counter that the handler may bump after the
// client saw the stream end.
func waitCount(t *testing.T, get func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for get() < want {
		if time.Now().After(deadline) {
			t.Fatalf("counter %v, want %v", get(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEpochBound: in plaintext, an epoch far ahead of the reducer's clock
// is refused and the node's session stays; a greater epoch within the
// bound replaces it, predictably, and the replacement is counted.
func TestEpochBound(t *testing.T) {
	ts := serveAdmission(t, nil, DefaultAdmission())
	conn := startClient(t, ts)
	real := &healthy{s: conn.open(t)}
	now := uint64(time.Now().UnixNano())
	welcomed(t, real.s, "node-a", now)
	real.send(t)
	for _, e := range []uint64{math.MaxUint64, now + uint64(6*time.Minute)} {
		err := sendAll(conn, hello("node-a", e))(t)
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("epoch %d: %v, want FailedPrecondition", e, err)
		}
		real.send(t)
	}
	waitCount(t, func() float64 { return rejected(t, ts, reasonEpochInFuture) }, 2)
	// A lower epoch of the same boot is stale.
	if err := sendAll(conn, hello("node-a", now-1))(t); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale epoch: %v", err)
	}
	real.send(t)
	// A greater one within the bound wins; the old stream ends ABORTED.
	newer := &healthy{s: conn.open(t)}
	welcomed(t, newer.s, "node-a", now+uint64(time.Minute))
	newer.send(t)
	if _, err := real.s.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("replaced stream: %v, want Aborted", err)
	}
	waitCount(t, func() float64 { return testutil.ToFloat64(ts.srv.metrics.replaced) }, 1)
}

func startClient(t *testing.T, ts *testServer) *testServer {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+ts.grpc.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := *ts
	c.conn = conn
	return &c
}

// TestSessionCaps: a session that announces more sockets or processes
// than the cap ends with RESOURCE_EXHAUSTED before the batch is applied.
func TestSessionCaps(t *testing.T) {
	adm := DefaultAdmission()
	adm.MaxSessionSockets, adm.MaxSessionProcesses = 100, 10
	ts := serveAdmission(t, nil, adm)
	conn := startClient(t, ts)
	sockets := func(first, n int) []*ingestv1.Socket {
		var out []*ingestv1.Socket
		for i := range n {
			h := uint32(first + i)
			out = append(out, &ingestv1.Socket{Handle: h, Role: ingestv1.Role_ROLE_CLIENT,
				LocalAddr: []byte{10, 0, 0, 1}, LocalPort: 1024 + h, RemoteAddr: []byte{10, 0, 0, 2}, RemotePort: 80})
		}
		return out
	}
	closed := func(first, n int) []uint32 {
		var out []uint32
		for i := range n {
			out = append(out, uint32(first+i))
		}
		return out
	}

	s := conn.open(t)
	welcomed(t, s, "node-a", 1)
	steps := []struct {
		b  *ingestv1.Batch
		ok bool
	}{
		{&ingestv1.Batch{Sequence: 1, Sockets: sockets(1, 60)}, true},
		{&ingestv1.Batch{Sequence: 2, ClosedSockets: closed(1, 30)}, true},
		{&ingestv1.Batch{Sequence: 3, Sockets: sockets(61, 70)}, true}, // 30 + 70 = 100
		{&ingestv1.Batch{Sequence: 4, Sockets: sockets(131, 1)}, false},
	}
	for i, st := range steps {
		if err := s.Send(batch(st.b)); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if st.ok {
			if err != nil || resp.GetAck().GetSequence() != st.b.Sequence {
				t.Fatalf("step %d: %v %v", i, resp, err)
			}
			continue
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("step %d: %v, want ResourceExhausted", i, err)
		}
	}
	waitCount(t, func() float64 { return rejected(t, ts, reasonSessionSockets) }, 1)
	if n, _, _ := ts.engine.Counts(); n > 100 {
		t.Errorf("engine holds %d sockets, over the cap", n)
	}

	procs := make([]*ingestv1.Process, 11)
	for i := range procs {
		procs[i] = &ingestv1.Process{Handle: uint32(i + 1), Comm: "p"}
	}
	err := sendAll(conn, hello("node-b", 1), batch(&ingestv1.Batch{Sequence: 1, Processes: procs}))(t)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("processes over the cap: %v", err)
	}
	waitCount(t, func() float64 { return rejected(t, ts, reasonSessionProcs) }, 1)
}

// TestHelloTimeout: a stream that sends nothing ends at the hello timeout.
func TestHelloTimeout(t *testing.T) {
	adm := DefaultAdmission()
	adm.HelloTimeout = 200 * time.Millisecond
	ts := serveAdmission(t, nil, adm)
	conn := startClient(t, ts)
	s := conn.open(t)
	start := time.Now()
	_, err := s.Recv()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent stream: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("ended after %s", d)
	}
	waitCount(t, func() float64 { return rejected(t, ts, reasonHelloTimeout) }, 1)
	// A prompt hello is unaffected.
	h := &healthy{s: conn.open(t)}
	welcomed(t, h.s, "node-a", 1)
	time.Sleep(300 * time.Millisecond)
	h.send(t)
}
