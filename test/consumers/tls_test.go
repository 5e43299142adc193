package consumers

import (
	"strings"
	"testing"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestObserverMTLS: weirctl with a client certificate reads a reducer that
// requires mTLS; without one, or with one the reducer does not trust, or
// with TLS against a plaintext reducer, it fails with a message that says
// what to do.
func TestObserverMTLS(t *testing.T) {
	certs := harness.NewCerts(t)
	other := harness.NewCerts(t) // a CA the reducer does not know
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: []string{
		"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey, "--tls-ca", certs.CA,
	}})
	plain := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"client certificate", []string{"status", "--server", w.GRPCAddr,
			"--tls-cert", certs.ObserverCert, "--tls-key", certs.ObserverKey, "--tls-ca", certs.CA}, 0, "Reducer", ""},
		{"map with a client certificate", []string{"map", "--server", w.GRPCAddr, "-o", "json",
			"--tls-cert", certs.ObserverCert, "--tls-key", certs.ObserverKey, "--tls-ca", certs.CA}, 0, `"edges"`, ""},
		{"no certificate", []string{"status", "--server", w.GRPCAddr}, 1, "",
			"it probably requires mTLS; pass --tls-cert, --tls-key and --tls-ca"},
		{"untrusted client certificate", []string{"status", "--server", w.GRPCAddr,
			"--tls-cert", other.ObserverCert, "--tls-key", other.ObserverKey, "--tls-ca", certs.CA}, 1, "", "the client certificate"},
		{"unknown server CA", []string{"status", "--server", w.GRPCAddr,
			"--tls-cert", certs.ObserverCert, "--tls-key", certs.ObserverKey, "--tls-ca", other.CA}, 1, "", "does not verify against --tls-ca"},
		{"TLS to a plaintext reducer", []string{"status", "--server", plain.GRPCAddr,
			"--tls-cert", certs.ObserverCert, "--tls-key", certs.ObserverKey, "--tls-ca", certs.CA}, 1, "", "speaks plaintext, not TLS"},
		{"plaintext", []string{"status", "--server", plain.GRPCAddr}, 0, "Reducer", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCtl(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) {
				t.Errorf("weirctl %s: exit %d\nstdout %s\nstderr %s\nwant exit %d, stdout with %q, stderr with %q",
					strings.Join(tc.args, " "), code, out, errOut, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}
