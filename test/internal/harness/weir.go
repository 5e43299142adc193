package harness

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Weir is a running reducer and, optionally, a collector.
type Weir struct {
	Reducer             *Process
	Collector           *Process
	GRPCAddr            string // reducer ingest, 127.0.0.1:port
	MetricsURL          string // reducer /metrics
	CollectorMetricsURL string

	reducerArgs []string
	readyURL    string
}

// WeirOptions tune StartWeir.
type WeirOptions struct {
	Interval      time.Duration // collector --interval; 1s when zero
	ReducerArgs   []string
	CollectorArgs []string
	NoCollector   bool
}

// StartWeir starts bin/weir-reducer and bin/weir-collector on free loopback
// ports and waits until both answer their health checks.
func StartWeir(t testing.TB, opts WeirOptions) *Weir {
	t.Helper()
	bin := Binaries(t)
	if opts.Interval == 0 {
		opts.Interval = time.Second
	}
	grpcPort, httpPort, colPort := FreePort(t), FreePort(t), FreePort(t)
	w := &Weir{
		GRPCAddr:            fmt.Sprintf("127.0.0.1:%d", grpcPort),
		MetricsURL:          fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort),
		CollectorMetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort),
	}
	args := append([]string{filepath.Join(bin, "weir-reducer"),
		"--grpc-addr", w.GRPCAddr,
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort)}, opts.ReducerArgs...)
	w.reducerArgs, w.readyURL = args, fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	w.Reducer = Start(t, "weir-reducer", args...)
	WaitHTTP(t, w.readyURL, 20*time.Second)
	if opts.NoCollector {
		return w
	}
	w.Collector = StartCollector(t, w.GRPCAddr, colPort, opts.Interval, opts.CollectorArgs...)
	return w
}

// RestartReducer stops the reducer and starts a new one with the same
// flags and ports, which knows nothing of the old one's state.
func (w *Weir) RestartReducer(t testing.TB) {
	t.Helper()
	w.Reducer.Stop(10 * time.Second)
	w.Reducer = Start(t, "weir-reducer", w.reducerArgs...)
	WaitHTTP(t, w.readyURL, 20*time.Second)
}

// StartCollector starts bin/weir-collector sending to reducer, with its HTTP
// endpoint on 127.0.0.1:httpPort, and waits for /healthz: 30 s, or
// $WEIR_COLLECTOR_START_TIMEOUT (a Go duration; test/kernels -bench sets
// it, as a collector under qemu TCG takes longer to start).
func StartCollector(t testing.TB, reducer string, httpPort int, interval time.Duration, extra ...string) *Process {
	t.Helper()
	args := append([]string{filepath.Join(Binaries(t), "weir-collector"),
		"--reducer", reducer,
		"--interval", interval.String(),
		"--node-name", "e2e-node",
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort)}, extra...)
	p := Start(t, "weir-collector", args...)
	wait := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("WEIR_COLLECTOR_START_TIMEOUT")); err == nil && d > 0 {
		wait = d
	}
	WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort), wait)
	return p
}

// WaitHTTP polls url until it answers 200.
func WaitHTTP(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	client := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within %s", url, timeout)
}
