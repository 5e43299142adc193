package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-project/weir/reducer/internal/authn"
)

func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"certs", "--dir", dir, "--nodes", "node-a, node-b", "--observers", "weirctl,grafana",
		"--trust-domain", "prod.example", "--server-names", "weir-reducer.weir.svc,10.1.2.3"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	load := func(name string) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		usage := x509.ExtKeyUsageClientAuth
		if name == "reducer" {
			usage = x509.ExtKeyUsageServerAuth
		}
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("%s does not verify: %v", name, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, name+"-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s key mode %v %v", name, fi.Mode(), err)
		}
		return pair.Leaf
	}
	for name, want := range map[string]authn.Identity{
		"node-node-a":      {Kind: authn.KindNode, Name: "node-a"},
		"node-node-b":      {Kind: authn.KindNode, Name: "node-b"},
		"k8s-watcher":      {Kind: authn.KindWatcher},
		"observer-weirctl": {Kind: authn.KindObserver, Name: "weirctl"},
		"observer-grafana": {Kind: authn.KindObserver, Name: "grafana"},
	} {
		got, err := authn.Parse(load(name), "prod.example")
		if err != nil || got != want {
			t.Errorf("%s: identity %v %v, want %v", name, got, err, want)
		}
	}
	srv := load("reducer")
	if err := srv.VerifyHostname("weir-reducer.weir.svc"); err != nil {
		t.Error(err)
	}
	if err := srv.VerifyHostname("10.1.2.3"); err != nil {
		t.Error(err)
	}
	if _, err := authn.Parse(srv, "prod.example"); err == nil {
		t.Error("the server certificate has a client identity")
	}

	// A second run reuses the CA: the first run's certificates still verify.
	out.Reset()
	if code := run(context.Background(), []string{"certs", "--dir", dir, "--nodes", "node-c", "--trust-domain", "prod.example"}, &out, &errOut); code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "reusing CA") {
		t.Errorf("second run output: %s", out.String())
	}
	load("node-node-a")
	load("node-node-c")
}
