package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ca is a test CA that issues leaves with SPIFFE IDs.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, cn string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf's certificate and key PEM, with the given URIs.
func (c *ca) issue(t *testing.T, serial int64, notAfter time.Time, uris ...string) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert, _ = x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), cert
}

func TestParse(t *testing.T) {
	c := newCA(t, "ca")
	tests := []struct {
		name string
		uris []string
		want Identity
		ok   bool
	}{
		{"node", []string{"spiffe://weir.local/node/node-a.example"}, Identity{Kind: KindNode, Name: "node-a.example"}, true},
		{"watcher", []string{"spiffe://weir.local/k8s-watcher"}, Identity{Kind: KindWatcher}, true},
		{"observer", []string{"spiffe://weir.local/observer/weirctl"}, Identity{Kind: KindObserver, Name: "weirctl"}, true},
		{"other uri beside", []string{"https://example.com/x", "spiffe://weir.local/node/a"}, Identity{Kind: KindNode, Name: "a"}, true},
		{"none", nil, Identity{}, false},
		{"two spiffe ids", []string{"spiffe://weir.local/node/a", "spiffe://weir.local/node/b"}, Identity{}, false},
		{"other trust domain", []string{"spiffe://evil.local/node/a"}, Identity{}, false},
		{"unknown kind", []string{"spiffe://weir.local/admin"}, Identity{}, false},
		{"node without name", []string{"spiffe://weir.local/node/"}, Identity{}, false},
		{"node name with upper case", []string{"spiffe://weir.local/node/A"}, Identity{}, false},
		{"nested path", []string{"spiffe://weir.local/node/a/b"}, Identity{}, false},
		{"query", []string{"spiffe://weir.local/node/a?x=1"}, Identity{}, false},
		{"port", []string{"spiffe://weir.local:8080/node/a"}, Identity{}, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, cert := c.issue(t, int64(i+2), time.Now().Add(time.Hour), tc.uris...)
			got, err := Parse(cert, DefaultTrustDomain)
			if tc.ok != (err == nil) || got != tc.want {
				t.Fatalf("Parse = %+v, %v; want %+v, ok=%v", got, err, tc.want, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrNoIdentity) {
				t.Errorf("error %v is not ErrNoIdentity", err)
			}
			if tc.ok {
				if back, err := ParseID(got.ID(DefaultTrustDomain), DefaultTrustDomain); err != nil || back != got {
					t.Errorf("ID round trip: %v %v", back, err)
				}
			}
		})
	}
}

func writeFiles(t *testing.T, dir string, certPEM, keyPEM, caPEM []byte) Files {
	t.Helper()
	f := Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt")}
	for p, b := range map[string][]byte{f.Cert: certPEM, f.Key: keyPEM, f.CA: caPEM} {
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestReloaderRotates checks that a handshake after the files changed
// presents the new certificate, that a broken update keeps the last good
// one and is counted, and that the CA rotates too.
func TestReloaderRotates(t *testing.T) {
	dir := t.TempDir()
	ca1 := newCA(t, "ca1")
	cert1, key1, leaf1 := ca1.issue(t, 2, time.Now().Add(time.Hour))
	files := writeFiles(t, dir, cert1, key1, ca1.pem)
	reg := prometheus.NewPedanticRegistry()
	r, err := NewReloader(files, "weir_test", reg)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	r.now = func() time.Time { return clock }
	serverCert := func() *x509.Certificate {
		t.Helper()
		cfg, err := r.ServerConfig().GetConfigForClient(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Certificates[0].Leaf
	}
	if !serverCert().Equal(leaf1) {
		t.Fatal("first certificate not served")
	}
	if got := testutil.ToFloat64(r.expiry); got != float64(leaf1.NotAfter.Unix()) {
		t.Errorf("expiry gauge %v, want %v", got, leaf1.NotAfter.Unix())
	}

	// A new pair under a new CA: served after CheckInterval.
	ca2 := newCA(t, "ca2")
	cert2, key2, leaf2 := ca2.issue(t, 3, time.Now().Add(2*time.Hour))
	writeFiles(t, dir, cert2, key2, ca2.pem)
	if !serverCert().Equal(leaf1) {
		t.Error("files were read again within CheckInterval")
	}
	clock = clock.Add(CheckInterval)
	if !serverCert().Equal(leaf2) {
		t.Fatal("rotated certificate not served")
	}
	cfg, _ := r.ServerConfig().GetConfigForClient(&tls.ClientHelloInfo{})
	if _, err := leaf2.Verify(x509.VerifyOptions{Roots: cfg.ClientCAs}); err != nil {
		t.Errorf("rotated CA not in use: %v", err)
	}

	// A key that does not match its certificate (half a rotation): the
	// last good pair stays, the error is counted, and the next complete
	// write is taken.
	cert3, key3, leaf3 := ca2.issue(t, 4, time.Now().Add(3*time.Hour))
	writeFiles(t, dir, cert3, key2, ca2.pem)
	clock = clock.Add(CheckInterval)
	if !serverCert().Equal(leaf2) {
		t.Error("a broken pair replaced the good one")
	}
	if got := testutil.ToFloat64(r.reloads.WithLabelValues("error")); got != 1 {
		t.Errorf("reload errors %v, want 1", got)
	}
	writeFiles(t, dir, cert3, key3, ca2.pem)
	clock = clock.Add(CheckInterval)
	if !serverCert().Equal(leaf3) {
		t.Error("the completed rotation was not taken")
	}
	if got := testutil.ToFloat64(r.reloads.WithLabelValues("ok")); got != 2 {
		t.Errorf("reloads %v, want 2", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestNewReloaderErrors(t *testing.T) {
	dir := t.TempDir()
	c := newCA(t, "ca")
	cert, key, _ := c.issue(t, 2, time.Now().Add(time.Hour))
	files := writeFiles(t, dir, cert, key, c.pem)
	for name, f := range map[string]Files{
		"missing cert": {Cert: filepath.Join(dir, "nope"), Key: files.Key, CA: files.CA},
		"key as ca":    {Cert: files.Cert, Key: files.Key, CA: files.Key},
		"cert as key":  {Cert: files.Cert, Key: files.Cert, CA: files.CA},
	} {
		if _, err := NewReloader(f, "weir_test", nil); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFromContext(t *testing.T) {
	if _, ok := FromContext(context.Background()); ok {
		t.Error("identity in a bare context")
	}
	id := Identity{Kind: KindNode, Name: "a"}
	if got, ok := FromContext(WithIdentity(context.Background(), id)); !ok || got != id {
		t.Errorf("got %v %v", got, ok)
	}
}
