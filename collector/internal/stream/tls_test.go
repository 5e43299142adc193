package stream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (c *testCA) leaf(t *testing.T, serial int64, usage x509.ExtKeyUsage, dns string) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Duration(serial) * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, DNSNames: []string{dns}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert, _ = x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), cert
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestTLSFilesRotate: after the files change, the next handshake presents
// the new client certificate and verifies the reducer against the new CA;
// a broken pair keeps the last good one.
func TestTLSFilesRotate(t *testing.T) {
	dir := t.TempDir()
	certF, keyF, caF := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	ca1 := newTestCA(t)
	c1, k1, leaf1 := ca1.leaf(t, 2, x509.ExtKeyUsageClientAuth, "node-a")
	writeAtomic(t, certF, c1)
	writeAtomic(t, keyF, k1)
	writeAtomic(t, caF, ca1.pem)
	f, err := newTLSFiles(certF, keyF, caF, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	f.now = func() time.Time { return clock }
	cfg := f.config()
	client := func() *x509.Certificate {
		t.Helper()
		c, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	verify := func(ca *testCA, name string) error {
		_, _, srv := ca.leaf(t, 9, x509.ExtKeyUsageServerAuth, "reducer.example")
		return cfg.VerifyConnection(tls.ConnectionState{ServerName: name, PeerCertificates: []*x509.Certificate{srv}})
	}
	if !client().Equal(leaf1) || verify(ca1, "reducer.example") != nil {
		t.Fatal("first files not in use")
	}
	if verify(ca1, "other.example") == nil {
		t.Error("a certificate for another name verified")
	}

	ca2 := newTestCA(t)
	c2, k2, leaf2 := ca2.leaf(t, 3, x509.ExtKeyUsageClientAuth, "node-a")
	writeAtomic(t, certF, c2)
	writeAtomic(t, keyF, k2)
	writeAtomic(t, caF, ca2.pem)
	clock = clock.Add(tlsCheckInterval)
	if !client().Equal(leaf2) {
		t.Fatal("rotated client certificate not presented")
	}
	if verify(ca2, "reducer.example") != nil || verify(ca1, "reducer.example") == nil {
		t.Error("the rotated CA is not the one in use")
	}
	if got := testutil.ToFloat64(f.expiry); got != float64(leaf2.NotAfter.Unix()) {
		t.Errorf("expiry %v", got)
	}

	writeAtomic(t, keyF, k1) // a key of another certificate
	clock = clock.Add(tlsCheckInterval)
	if !client().Equal(leaf2) {
		t.Error("a broken pair replaced the good one")
	}
	if testutil.ToFloat64(f.reloads.WithLabelValues("error")) != 1 || testutil.ToFloat64(f.reloads.WithLabelValues("ok")) != 1 {
		t.Error("reloads not counted")
	}
}
