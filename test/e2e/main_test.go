// Package e2e runs weir's real binaries against real traffic between network
// namespaces on this kernel and checks the reducer's Prometheus scrape.
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if peerDir != "" {
			_ = os.RemoveAll(peerDir)
		}
	}))
}

// The test peers run as copies of flowsrv and flowcli named after this test
// process, so that the edges they make (named by comm) are this process's
// only, even while another test process runs on the same machine: the
// collector sees every process there.
var (
	srvName = fmt.Sprintf("fsrv%d", os.Getpid())
	cliName = fmt.Sprintf("fcli%d", os.Getpid())

	peerOnce sync.Once
	peerDir  string
	peerErr  error
)

// peerBin is the path of the copy of flowsrv ("flowsrv") or flowcli
// ("flowcli") under this test process's name.
func peerBin(t testing.TB, name string) string {
	t.Helper()
	peerOnce.Do(func() {
		bin := harness.Binaries(t)
		if peerDir, peerErr = os.MkdirTemp("", "weir-peers-"); peerErr != nil {
			return
		}
		for from, to := range map[string]string{"flowsrv": srvName, "flowcli": cliName} {
			b, err := os.ReadFile(filepath.Join(bin, from))
			if err != nil {
				peerErr = err
				return
			}
			if err := os.WriteFile(filepath.Join(peerDir, to), b, 0o755); err != nil {
				peerErr = err
				return
			}
		}
	})
	if peerErr != nil {
		t.Fatal(peerErr)
	}
	switch name {
	case "flowsrv":
		return filepath.Join(peerDir, srvName)
	case "flowcli":
		return filepath.Join(peerDir, cliName)
	}
	t.Fatalf("no test peer %q", name)
	return ""
}
