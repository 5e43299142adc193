package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Certs are PEM files of a test CA and of a server and client certificates
// it signed, for mTLS between weir's components. Client certificates name
// their identity with a SPIFFE ID in trust domain weir.local, as the
// reducer requires under mTLS.
type Certs struct {
	CA                    string
	ServerCert, ServerKey string // valid for 127.0.0.1 and localhost
	// ClientCert is node e2e-node's: spiffe://weir.local/node/e2e-node,
	// the node name that StartCollector gives.
	ClientCert, ClientKey     string
	ObserverCert, ObserverKey string // spiffe://weir.local/observer/weirctl
	WatcherCert, WatcherKey   string // spiffe://weir.local/k8s-watcher

	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

// TrustDomain is the trust domain of the test certificates, the reducer's
// default.
const TrustDomain = "weir.local"

// NewCerts writes a fresh CA, server and client certificate into a
// temporary directory.
func NewCerts(t testing.TB) Certs {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "weir test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	c := Certs{CA: writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER), dir: dir, ca: ca, caKey: caKey, serial: 1}
	c.ServerCert, c.ServerKey = c.leaf(t, "reducer", "", x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = c.Issue(t, "collector", "/node/e2e-node")
	c.ObserverCert, c.ObserverKey = c.Issue(t, "observer", "/observer/weirctl")
	c.WatcherCert, c.WatcherKey = c.Issue(t, "k8s-watcher", "/k8s-watcher")
	return c
}

// Issue writes a client certificate named name, with the SPIFFE ID
// spiffe://weir.local<path> (none when path is empty), and returns its
// certificate and key files.
func (c *Certs) Issue(t testing.TB, name, path string) (cert, key string) {
	t.Helper()
	return c.leaf(t, name, path, x509.ExtKeyUsageClientAuth)
}

func (c *Certs) leaf(t testing.TB, name, path string, usage x509.ExtKeyUsage) (cert, key string) {
	t.Helper()
	now := time.Now()
	c.serial++
	k := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(c.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	if path != "" {
		tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: TrustDomain, Path: path}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &k.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, c.dir, name+".pem", "CERTIFICATE", der), writePEM(t, c.dir, name+"-key.pem", "EC PRIVATE KEY", kder)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
