package k8s

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/test/internal/harness"
)

var (
	watcherOnce sync.Once
	watcherBin  string
	watcherErr  error
)

// watcherPath is bin/weir-k8s-watcher from $WEIR_BIN_DIR (make test), else
// built once per test process.
func watcherPath(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("WEIR_BIN_DIR"); dir != "" {
		return filepath.Join(dir, "weir-k8s-watcher")
	}
	watcherOnce.Do(func() {
		dir, err := os.MkdirTemp("", "weir-k8s-watcher-")
		if err != nil {
			watcherErr = err
			return
		}
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weir-project/weir/k8s-watcher/cmd/weir-k8s-watcher")
		cmd.Dir = filepath.Dir(file)
		if out, err := cmd.CombinedOutput(); err != nil {
			watcherErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
		watcherBin = filepath.Join(dir, "weir-k8s-watcher")
	})
	if watcherErr != nil {
		t.Fatal(watcherErr)
	}
	return watcherBin
}

// rbacPath is the watcher's RBAC file, applied as it is.
func rbacPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "k8s-watcher", "deploy", "rbac.yaml")
}

// Watcher is a running weir-k8s-watcher.
type Watcher struct {
	Proc       *harness.Process
	MetricsURL string
	args       []string
	name       string
}

// StartWatcher starts a watcher with kubeconfig, streaming to reducer.
func StartWatcher(t testing.TB, name, kubeconfig, reducer string, extra ...string) *Watcher {
	t.Helper()
	port := harness.FreePort(t)
	w := &Watcher{MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), name: name}
	w.args = append([]string{watcherPath(t), "--kubeconfig", kubeconfig, "--reducer", reducer,
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", port), "--cluster", "test", "--identity", name,
		"--lease-namespace", "weir"}, extra...)
	w.Proc = harness.Start(t, name, w.args...)
	harness.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", port), 20*time.Second)
	return w
}

// Metric returns one value of the watcher's metrics, or -1.
func (w *Watcher) Metric(name string, labels map[string]string) float64 {
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		return -1
	}
	v, ok := m.Value(name, labels)
	if !ok {
		return -1
	}
	return v
}

// Reducer is a client of the reducer's metadata service.
type Reducer struct {
	conn   *grpc.ClientConn
	client metadatav1.MetadataServiceClient
}

func dialReducer(t testing.TB, addr string) *Reducer {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Reducer{conn: conn, client: metadatav1.NewMetadataServiceClient(conn)}
}

// View is what the reducer names an address, in short: kind/name@namespace
// zone=… pod=…; "none" when nothing.
func (r *Reducer) View(ip string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := r.client.Lookup(ctx, &metadatav1.LookupRequest{Ip: ip})
	if err != nil {
		return "error: " + err.Error()
	}
	if !resp.GetFound() {
		return "none"
	}
	s := resp.GetKind() + "/" + resp.GetName()
	if resp.GetNamespace() != "" {
		s += "@" + resp.GetNamespace()
	}
	if resp.GetZone() != "" {
		s += " zone=" + resp.GetZone()
	}
	if resp.GetPod() != "" {
		s += " pod=" + resp.GetPod()
	}
	return s
}

// Eventually waits until the reducer's view of each address is as wanted,
// and returns how long that took.
func (r *Reducer) Eventually(t testing.TB, step string, timeout time.Duration, want map[string]string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		got := map[string]string{}
		ok := true
		for ip, w := range want {
			got[ip] = r.View(ip)
			if got[ip] != w {
				ok = false
			}
		}
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the reducer's view after %s:\n got  %v\n want %v", step, timeout, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
