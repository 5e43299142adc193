package main

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
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
)

// testPKI writes a CA, the reducer's certificate and one client
// certificate per SPIFFE path into dir.
func testPKI(t *testing.T, dir string, paths map[string]string) *x509.CertPool {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	serial := int64(1)
	leaf := func(name, path string, usage x509.ExtKeyUsage) {
		serial++
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		if path != "" {
			tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: "weir.local", Path: path}}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		write(name+".pem", "CERTIFICATE", der)
		write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	leaf("reducer", "", x509.ExtKeyUsageServerAuth)
	for name, path := range paths {
		leaf(name, path, x509.ExtKeyUsageClientAuth)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestIdentitiesCallTheirService runs the reducer as main wires it, with
// mTLS, and checks that each identity calls its one service: a node
// ingest, the k8s-watcher metadata, an observer the Observer API.
func TestIdentitiesCallTheirService(t *testing.T) {
	dir := t.TempDir()
	pool := testPKI(t, dir, map[string]string{"node": "/node/node-a", "watcher": "/k8s-watcher", "observer": "/observer/weirctl"})
	cfg := defaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = freeAddr(t), freeAddr(t)
	cfg.TLSCert, cfg.TLSKey, cfg.TLSCA = filepath.Join(dir, "reducer.pem"), filepath.Join(dir, "reducer-key.pem"), filepath.Join(dir, "ca.pem")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	conn := func(name string) *grpc.ClientConn {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := grpc.NewClient("passthrough:///"+cfg.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	call := map[string]func(context.Context, *grpc.ClientConn) error{
		"ingest": func(ctx context.Context, c *grpc.ClientConn) error {
			st, err := ingestv1.NewIngestServiceClient(c).Stream(ctx)
			if err != nil {
				return err
			}
			if err := st.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
				ProtocolVersion: 1, NodeName: "node-a", BootId: "b", Epoch: uint64(time.Now().UnixNano())}}}); err != nil {
				_, err = st.Recv()
				return err
			}
			_, err = st.Recv()
			return err
		},
		"metadata": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := metadatav1.NewMetadataServiceClient(c).Lookup(ctx, &metadatav1.LookupRequest{Ip: "10.0.0.1"})
			return err
		},
		"observer": func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := observerv1.NewObserverServiceClient(c).GetStatus(ctx, &observerv1.GetStatusRequest{})
			return err
		},
	}
	allowed := map[string]string{"node": "ingest", "watcher": "metadata", "observer": "observer"}
	deadline := time.Now().Add(10 * time.Second)
	for id, own := range allowed {
		c := conn(id)
		for service, f := range call {
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := f(rctx, c)
			for status.Code(err) == codes.Unavailable && time.Now().Before(deadline) { // the server is starting
				time.Sleep(50 * time.Millisecond)
				err = f(rctx, c)
			}
			rcancel()
			if service == own && err != nil {
				t.Errorf("%s calling %s: %v", id, service, err)
			}
			if service != own && status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s calling %s: %v, want PermissionDenied", id, service, err)
			}
		}
	}
}
