package web

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_reducer_collectors_connected", Help: "Collector streams with an open session."})
	g.Set(2)
	reg.MustRegister(g)
	var ready atomic.Bool
	srv := New("127.0.0.1:0", reg, ready.Load, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("second shutdown: %v", err)
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	base := "http://" + srv.Addr().String()
	tests := []struct {
		name   string
		path   string
		ready  bool
		method string
		code   int
		body   string
	}{
		{name: "metrics", path: "/metrics", code: http.StatusOK, body: "weir_reducer_collectors_connected 2"},
		{name: "healthz", path: "/healthz", code: http.StatusOK, body: "ok"},
		{name: "readyz before the listener is up", path: "/readyz", code: http.StatusServiceUnavailable, body: "not ready"},
		{name: "readyz once ready", path: "/readyz", ready: true, code: http.StatusOK, body: "ready"},
		{name: "unknown path", path: "/nope", code: http.StatusNotFound},
		{name: "post to metrics", path: "/metrics", method: http.MethodPost, code: http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ready.Store(tc.ready)
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequestWithContext(t.Context(), method, base+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
				t.Errorf("%s %s: %d %q, want %d containing %q", method, tc.path, resp.StatusCode, body, tc.code, tc.body)
			}
		})
	}
	client.CloseIdleConnections()
}

// startServer starts a ready server of reg's metrics on a free port, after
// setup (nil: none) added its handlers, and shuts it down when t ends.
func startServer(t *testing.T, reg prometheus.Gatherer, setup func(*Server)) *Server {
	t.Helper()
	srv := New("127.0.0.1:0", reg, func() bool { return true }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if setup != nil {
		setup(srv)
	}
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}

func TestHandle(t *testing.T) {
	srv := startServer(t, prometheus.NewPedanticRegistry(), func(srv *Server) {
		srv.Handle("GET /api/v1/map", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"map":{}}`)
		}))
	})
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + srv.Addr().String() + "/api/v1/map")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"map":{}}` {
		t.Errorf("GET /api/v1/map: %d %q", resp.StatusCode, body)
	}
	client.CloseIdleConnections()
}

// TestMetricsGzip: a scrape that accepts gzip gets the exposition gzipped
// (at the fastest level, by gzipFast), one that does not gets it plain.
func TestMetricsGzip(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_tcp_bytes_total", Help: "Bytes."}, []string{"src_workload"})
	for i := range 200 {
		c.WithLabelValues(fmt.Sprintf("workload-%d", i)).Add(float64(i))
	}
	reg.MustRegister(c)
	srv := startServer(t, reg, nil)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	const want = `weir_tcp_bytes_total{src_workload="workload-199"} 199`
	for _, enc := range []string{"gzip", "identity"} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+srv.Addr().String()+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept-Encoding", enc)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body io.Reader = resp.Body
		got := resp.Header.Get("Content-Encoding")
		if enc == "gzip" {
			if got != "gzip" {
				t.Fatalf("Accept-Encoding gzip: Content-Encoding %q", got)
			}
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		} else if got != "" {
			t.Fatalf("Accept-Encoding %s: Content-Encoding %q", enc, got)
		}
		b, err := io.ReadAll(body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("Accept-Encoding %s: body lacks %q", enc, want)
		}
	}
}

// TestHandleProfiles: with HandleProfiles the server serves Go's
// profiles; without, it does not.
func TestHandleProfiles(t *testing.T) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	with := startServer(t, prometheus.NewPedanticRegistry(), func(srv *Server) { srv.HandleProfiles() })
	resp, body := get(t, client, "http://"+with.Addr().String()+"/debug/pprof/heap")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/heap: %d %s", resp.StatusCode, body)
	}
	if _, err := gzip.NewReader(strings.NewReader(body)); err != nil {
		t.Errorf("the heap profile is not a gzipped profile: %v", err)
	}
	if resp, body = get(t, client, "http://"+with.Addr().String()+"/debug/pprof/goroutine?debug=1"); resp.StatusCode != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1: %d %.200s", resp.StatusCode, body)
	}
	without := startServer(t, prometheus.NewPedanticRegistry(), nil)
	if resp, _ = get(t, client, "http://"+without.Addr().String()+"/debug/pprof/heap"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("without HandleProfiles GET /debug/pprof/heap: %d, want 404", resp.StatusCode)
	}
}
