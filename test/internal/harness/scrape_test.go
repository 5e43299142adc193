package harness

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixture is a scrape with a family of every kind that Value reads, and a
// histogram, which it does not.
const fixture = `# HELP weir_tcp_bytes_total Bytes sent between workloads.
# TYPE weir_tcp_bytes_total counter
weir_tcp_bytes_total{src="curl",dst="nginx",zone="a"} 100
weir_tcp_bytes_total{src="curl",dst="nginx",zone="b"} 50
weir_tcp_bytes_total{src="nginx",dst="curl",zone="a"} 7
# HELP weir_reducer_flows TCP connections tracked.
# TYPE weir_reducer_flows gauge
weir_reducer_flows 3
# TYPE weir_up untyped
weir_up{job="reducer"} 1
weir_up{job="collector"} 0.5
# TYPE weir_rtt_seconds histogram
weir_rtt_seconds_bucket{le="0.1"} 1
weir_rtt_seconds_bucket{le="+Inf"} 2
weir_rtt_seconds_sum 0.3
weir_rtt_seconds_count 2
`

// serve returns the URL of a server that answers every request with status
// and body.
func serve(t *testing.T, status int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

func scrapeFixture(t *testing.T) Metrics {
	t.Helper()
	m, err := Scrape(serve(t, http.StatusOK, fixture))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestValue(t *testing.T) {
	m := scrapeFixture(t)
	tests := []struct {
		name   string
		family string
		match  map[string]string
		want   float64
		wantOK bool
	}{
		{name: "counter, every label", family: "weir_tcp_bytes_total",
			match: map[string]string{"src": "curl", "dst": "nginx", "zone": "b"}, want: 50, wantOK: true},
		{name: "counter, labels that single out one series", family: "weir_tcp_bytes_total",
			match: map[string]string{"src": "nginx"}, want: 7, wantOK: true},
		{name: "counter, ambiguous", family: "weir_tcp_bytes_total",
			match: map[string]string{"src": "curl", "dst": "nginx"}},
		{name: "counter, no labels is ambiguous", family: "weir_tcp_bytes_total"},
		{name: "counter, value matches no series", family: "weir_tcp_bytes_total",
			match: map[string]string{"src": "curl", "zone": "c"}},
		{name: "counter, label the series lack", family: "weir_tcp_bytes_total",
			match: map[string]string{"src": "nginx", "pod": "p"}},
		{name: "gauge without labels", family: "weir_reducer_flows", want: 3, wantOK: true},
		{name: "gauge, label it lacks", family: "weir_reducer_flows", match: map[string]string{"job": "reducer"}},
		{name: "untyped", family: "weir_up", match: map[string]string{"job": "collector"}, want: 0.5, wantOK: true},
		{name: "untyped, ambiguous", family: "weir_up"},
		{name: "missing family", family: "weir_missing_total"},
		{name: "histogram is not read", family: "weir_rtt_seconds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := m.Value(tc.family, tc.match)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("Value(%q, %v) = %v, %v; want %v, %v", tc.family, tc.match, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestSum(t *testing.T) {
	m := scrapeFixture(t)
	tests := []struct {
		name   string
		family string
		match  map[string]string
		want   float64
	}{
		{name: "counter, every series", family: "weir_tcp_bytes_total", want: 157},
		{name: "counter, one label", family: "weir_tcp_bytes_total", match: map[string]string{"src": "curl"}, want: 150},
		{name: "counter, two labels", family: "weir_tcp_bytes_total", match: map[string]string{"zone": "a", "dst": "nginx"}, want: 100},
		{name: "counter, no match", family: "weir_tcp_bytes_total", match: map[string]string{"zone": "c"}},
		{name: "counter, label the series lack", family: "weir_tcp_bytes_total", match: map[string]string{"pod": "p"}},
		{name: "gauge", family: "weir_reducer_flows", want: 3},
		{name: "untyped", family: "weir_up", want: 1.5},
		{name: "missing family", family: "weir_missing_total"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.Sum(tc.family, tc.match); got != tc.want {
				t.Errorf("Sum(%q, %v) = %v, want %v", tc.family, tc.match, got, tc.want)
			}
		})
	}
}

func TestScrapeErrors(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantErr string
	}{
		{name: "not 200", status: http.StatusServiceUnavailable, body: fixture, wantErr: "503 Service Unavailable"},
		{name: "not found", status: http.StatusNotFound, body: "404 page not found\n", wantErr: "404 Not Found"},
		{name: "not the text format", status: http.StatusOK, body: "weir_up{job=\n", wantErr: "parse "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := serve(t, tc.status, tc.body)
			m, err := Scrape(url)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), url) {
				t.Fatalf("Scrape = %v, %v; want an error naming %s and containing %q", m, err, url, tc.wantErr)
			}
			if m != nil {
				t.Errorf("Scrape returned metrics with the error: %v", m)
			}
		})
	}
}
