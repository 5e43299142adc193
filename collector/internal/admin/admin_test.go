package admin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestServe(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "weir_collector_test_total", Help: "A test counter."})
	c.Add(7)
	reg.MustRegister(c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	profiled := New(reg, logger)
	profiled.HandleProfiles()
	go func() { done <- profiled.Serve(ctx, ln) }()
	go func() { done <- New(reg, logger).Serve(ctx, plain) }()

	base := "http://" + ln.Addr().String()
	tests := []struct {
		name, base, path, method string
		wantStatus               int
		wantBody                 string
	}{
		{name: "metrics", path: "/metrics", method: http.MethodGet, wantStatus: 200, wantBody: "weir_collector_test_total 7"},
		{name: "healthz", path: "/healthz", method: http.MethodGet, wantStatus: 200, wantBody: "ok"},
		{name: "unknown path", path: "/nope", method: http.MethodGet, wantStatus: 404},
		{name: "wrong method", path: "/healthz", method: http.MethodPost, wantStatus: 405},
		{name: "profiles", path: "/debug/pprof/", method: http.MethodGet, wantStatus: 200, wantBody: "goroutine"},
		{name: "heap profile", path: "/debug/pprof/heap?debug=1", method: http.MethodGet, wantStatus: 200, wantBody: "heap profile"},
		{name: "no profiles without --pprof", base: "http://" + plain.Addr().String(), path: "/debug/pprof/", method: http.MethodGet, wantStatus: 404},
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := base
			if tc.base != "" {
				at = tc.base
			}
			req, err := http.NewRequest(tc.method, at+tc.path, nil)
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
			if resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, body)
			}
		})
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
