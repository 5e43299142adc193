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
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weir-project/weir/reducer/internal/authn"
)

// certs writes a CA and the certificates of a small install or a test:
// the reducer's server certificate, and one client certificate per
// identity, each naming it with one SPIFFE ID in a URI SAN:
//
//	spiffe://<trust-domain>/node/<node>     a collector (node-<node>.pem)
//	spiffe://<trust-domain>/k8s-watcher     the k8s-watcher (k8s-watcher.pem)
//	spiffe://<trust-domain>/observer/<name> weirctl or a UI (observer-<name>.pem)
//
// An existing ca.pem and ca-key.pem in --dir are reused, so that nodes can
// be added later and a certificate renewed under the same CA.
func certs(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weirctl certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "weir-certs", "directory to write the PEM files into")
	td := fs.String("trust-domain", authn.DefaultTrustDomain, "SPIFFE trust domain, as the reducer's --trust-domain")
	nodes := fs.String("nodes", "", "comma-separated node names: one collector certificate each")
	observers := fs.String("observers", "weirctl", "comma-separated observer names: one certificate each")
	watcher := fs.Bool("k8s-watcher", true, "write the k8s-watcher's certificate")
	hosts := fs.String("server-names", "localhost,127.0.0.1,weir-reducer", "comma-separated DNS names and IPs of the reducer's certificate (e.g. its Service's names)")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity of the leaf certificates")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "weirctl certs: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	g := certGen{dir: *dir, td: *td, validity: *validity, out: stdout}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return err
	}
	if err := g.loadOrMakeCA(); err != nil {
		return err
	}
	var dns []string
	var ips []net.IP
	for _, h := range split(*hosts) {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	if err := g.leaf("reducer", "weir-reducer", "", dns, ips, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	for _, n := range split(*nodes) {
		if err := g.leaf("node-"+n, n, "/node/"+n, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
			return err
		}
	}
	if *watcher {
		if err := g.leaf("k8s-watcher", "weir-k8s-watcher", "/k8s-watcher", nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
			return err
		}
	}
	for _, o := range split(*observers) {
		if err := g.leaf("observer-"+o, o, "/observer/"+o, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
			return err
		}
	}
	return nil
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

type certGen struct {
	dir      string
	td       string
	validity time.Duration
	out      io.Writer

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

func (g *certGen) path(name string) string { return filepath.Join(g.dir, name) }

// loadOrMakeCA reuses ca.pem and ca-key.pem, or writes a new CA valid for
// ten years.
func (g *certGen) loadOrMakeCA() error {
	if pair, err := tls.LoadX509KeyPair(g.path("ca.pem"), g.path("ca-key.pem")); err == nil {
		key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
		if !ok || pair.Leaf == nil || !pair.Leaf.IsCA {
			return fmt.Errorf("%s: not an ECDSA CA of weirctl certs", g.path("ca.pem"))
		}
		g.ca, g.caKey = pair.Leaf, key
		fmt.Fprintf(g.out, "reusing CA %s\n", g.path("ca.pem"))
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w", g.path("ca.pem"), err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "weir CA " + g.td},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		// Name constraints: this CA can sign identities of its trust
		// domain only.
		PermittedURIDomains: []string{g.td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if g.ca, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	g.caKey = key
	return g.write("ca", der, key)
}

// leaf writes name.pem and name-key.pem: a certificate for cn with the
// SPIFFE ID spiffe://<td><path> when path is not empty.
func (g *certGen) leaf(name, cn, path string, dns []string, ips []net.IP, usage x509.ExtKeyUsage) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(g.validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if path != "" {
		tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: g.td, Path: path}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, g.ca, &key.PublicKey, g.caKey)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return g.write(name, der, key)
}

// write writes name.pem and name-key.pem (0600) atomically, each through a
// temporary file and a rename, so that a reloading reader never sees half
// a file.
func (g *certGen) write(name string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		file string
		typ  string
		der  []byte
		mode os.FileMode
	}{{name + "-key.pem", "EC PRIVATE KEY", kder, 0o600}, {name + ".pem", "CERTIFICATE", der, 0o644}} {
		tmp := g.path("." + f.file + ".tmp")
		if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return err
		}
		if err := os.Rename(tmp, g.path(f.file)); err != nil {
			return err
		}
	}
	fmt.Fprintf(g.out, "wrote %s and %s\n", g.path(name+".pem"), g.path(name+"-key.pem"))
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}
