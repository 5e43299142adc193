// Package harness starts weir's binaries and the test peers as real
// processes, builds network namespaces for them, and scrapes their metrics.
package harness

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// RequireRoot skips the test without root, unless CI=true, where a missing
// privilege fails the test instead: a green CI run means really tested.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (eBPF, network namespaces) and CI=true: refusing to skip")
	}
	t.Skip("needs root (eBPF, network namespaces)")
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries is the directory holding weir-collector, weir-reducer, flowsrv
// and flowcli. It is $WEIR_BIN_DIR when set (make test builds into bin/),
// otherwise the binaries are built once per test process.
func Binaries(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("WEIR_BIN_DIR"); dir != "" {
		return dir
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "weir-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/",
			"github.com/weir-project/weir/collector/cmd/weir-collector",
			"github.com/weir-project/weir/reducer/cmd/weir-reducer",
			"github.com/weir-project/weir/test/cmd/flowsrv",
			"github.com/weir-project/weir/test/cmd/flowcli",
			"github.com/weir-project/weir/collector/internal/probe/floorsink")
		cmd.Dir = moduleDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func moduleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
