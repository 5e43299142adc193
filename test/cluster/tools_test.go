package cluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// helmVersion is the helm that build-tools.sh builds from the Go module proxy.
const helmVersion = "v3.22.0"

// k8sVersion is the Kubernetes of test/k8s's control plane and of the node.
const k8sVersion = "v1.34.12"

var (
	toolsMu   sync.Mutex
	toolsDone = map[string]error{}
)

// buildTools runs build-tools.sh what (helm, node) once per test process.
func buildTools(t testing.TB, what string) {
	t.Helper()
	toolsMu.Lock()
	defer toolsMu.Unlock()
	err, done := toolsDone[what]
	if !done {
		script := filepath.Join(packageDir(), "build-tools.sh")
		cmd := exec.Command("bash", script, what)
		cmd.Env = append(os.Environ(), "HELM_VERSION="+helmVersion, "K8S_VERSION="+k8sVersion)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err = cmd.Run(); err != nil {
			err = fmt.Errorf("%s %s: %w\n%s", script, what, err, out.String())
		} else if d := time.Since(start); d > 5*time.Second {
			t.Logf("built %s in %s", what, d.Round(time.Second))
		}
		toolsDone[what] = err
	}
	if err != nil {
		t.Fatal(err)
	}
}

func cacheDir() string {
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "weir")
}

// helmBin returns the path of helm, built on first use.
func helmBin(t testing.TB) string {
	t.Helper()
	buildTools(t, "helm")
	dir := os.Getenv("WEIR_TOOLS")
	if dir == "" {
		dir = filepath.Join(cacheDir(), "bin")
	}
	return filepath.Join(dir, "helm-"+helmVersion)
}

// k8sBin returns the directory of etcd, the control plane, kube-scheduler
// and kubelet, built on first use.
func k8sBin(t testing.TB) string {
	t.Helper()
	buildTools(t, "node")
	dir := os.Getenv("WEIR_K8S_CACHE")
	if dir == "" {
		dir = filepath.Join(cacheDir(), "k8s")
	}
	return filepath.Join(dir, k8sVersion, "bin")
}

func packageDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// repoDir is the root of the checkout.
func repoDir() string { return filepath.Join(packageDir(), "..", "..") }

// chartDir is charts/weir.
func chartDir() string { return filepath.Join(repoDir(), "charts", "weir") }

var (
	binMu    sync.Mutex
	binDir   string
	binBuilt = map[string]error{}
)

// mainPackages are the main packages of the binaries the tests use.
var mainPackages = map[string]string{
	"weir-collector":   "github.com/weir-project/weir/collector/cmd/weir-collector",
	"weir-reducer":     "github.com/weir-project/weir/reducer/cmd/weir-reducer",
	"weir-k8s-watcher": "github.com/weir-project/weir/k8s-watcher/cmd/weir-k8s-watcher",
	"weirctl":          "github.com/weir-project/weir/reducer/cmd/weirctl",
	"flowsrv":          "github.com/weir-project/weir/test/cmd/flowsrv",
	"flowcli":          "github.com/weir-project/weir/test/cmd/flowcli",
	"pause":            "github.com/weir-project/weir/test/cluster/pause",
}

// staticBinary builds the named binary statically (CGO_ENABLED=0, as in the
// images) once per test process and returns its path.
func staticBinary(t testing.TB, name string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if binDir == "" {
		var err error
		if binDir, err = os.MkdirTemp("", "weir-cluster-bin-"); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(binDir, name)
	err, done := binBuilt[name]
	if !done {
		pkg, ok := mainPackages[name]
		if !ok {
			t.Fatalf("no main package for %s", name)
		}
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", path, pkg)
		cmd.Dir = repoDir()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, e := cmd.CombinedOutput(); e != nil {
			err = fmt.Errorf("go build %s: %w\n%s", pkg, e, out)
		}
		binBuilt[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// weirBinary is a binary of $WEIR_BIN_DIR (make test's bin/) when it is
// there, else one this test builds.
func weirBinary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("WEIR_BIN_DIR"); dir != "" {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	return staticBinary(t, name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
