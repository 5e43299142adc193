package web

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/reflect/protoreflect"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/servicemap"
)

func get(t *testing.T, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
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
	return resp, string(body)
}

// TestMapPage checks that the page and its assets are served from the
// binary, offline (no other origin), and that the page reads the map from
// the reducer's own /api/v1/map.
func TestMapPage(t *testing.T) {
	srv := startServer(t, prometheus.NewPedanticRegistry(), nil)
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	base := "http://" + srv.Addr().String()

	for _, tc := range []struct{ path, ctype, want string }{
		{"/map", "text/html; charset=utf-8", `<script src="map/map.js">`},
		{"/map/map.js", "text/javascript; charset=utf-8", "const API = 'api/v1/map';"},
		{"/map/map.css", "text/css; charset=utf-8", "#map"},
	} {
		resp, body := get(t, client, base+tc.path)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != tc.ctype || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d %q, want 200 %q containing %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.ctype, tc.want)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", tc.path, csp)
		}
		// Offline: nothing from another origin.
		if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).FindString(body); m != "" {
			t.Errorf("GET %s loads from another origin: %q", tc.path, m)
		}
	}
	if resp, _ := get(t, client, base+"/map/"); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/map" {
		t.Errorf("GET /map/: %d to %q, want a redirect to /map", resp.StatusCode, resp.Header.Get("Location"))
	}
	js := readEmbedded(t, "map/map.js")
	for _, want := range []string{"fetch(API,", "fetch(METRICS,", "const METRICS = 'metrics';"} {
		if !strings.Contains(js, want) {
			t.Errorf("map.js does not contain %q", want)
		}
	}
	html := readEmbedded(t, "map/index.html")
	for _, id := range regexp.MustCompile(`\$\('([a-z-]+)'\)`).FindAllStringSubmatch(js, -1) {
		if !strings.Contains(html, `id="`+id[1]+`"`) {
			t.Errorf("map.js looks up #%s, which index.html lacks", id[1])
		}
	}
}

func readEmbedded(t *testing.T, name string) string {
	t.Helper()
	b, err := mapFiles.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ContractFields returns the field names that map.js reads from the
// /api/v1/map document: the properties accessed between its "BEGIN api
// contract" and "END api contract" lines (method calls left out).
func contractFields(t *testing.T, js string) []string {
	t.Helper()
	i, j := strings.Index(js, "// BEGIN api contract"), strings.Index(js, "// END api contract")
	if i < 0 || j < i {
		t.Fatal("map.js has no api contract block")
	}
	var out []string
	for _, m := range regexp.MustCompile(`\.([A-Za-z_][A-Za-z0-9_]*)\b(\s*\()?`).FindAllStringSubmatch(js[i:j], -1) {
		if m[2] != "" {
			continue // a method: .map(
		}
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// pageValues returns the Prometheus names map.js looks up in Edge.values,
// and the histogram it reads from /metrics.
func pageValues(t *testing.T, js string) (values []string, hist string) {
	t.Helper()
	i := strings.Index(js, "const V = {")
	j := strings.Index(js[i:], "};")
	if i < 0 || j < 0 {
		t.Fatal("map.js has no value names (const V)")
	}
	for _, m := range regexp.MustCompile(`'(weir_[a-z_]+)'`).FindAllStringSubmatch(js[i:i+j], -1) {
		values = append(values, m[1])
	}
	m := regexp.MustCompile(`const RTT = '(weir_[a-z_]+)'`).FindStringSubmatch(js)
	if m == nil {
		t.Fatal("map.js has no RTT histogram name")
	}
	return values, m[1]
}

// TestMapContract checks that every field the page reads is a field of the
// map's messages, under its JSON (proto) name, and present in the document
// the reducer serves; and that every value the page looks up is a flow
// metric the reducer has.
func TestMapContract(t *testing.T) {
	js := readEmbedded(t, "map/map.js")
	fields := contractFields(t, js)
	if len(fields) < 15 {
		t.Fatalf("api contract block reads %d fields (%v): the parser found too few", len(fields), fields)
	}
	known := map[string]bool{}
	for _, md := range []protoreflect.MessageDescriptor{
		(&observerv1.GetServiceMapResponse{}).ProtoReflect().Descriptor(),
		(&observerv1.ServiceMap{}).ProtoReflect().Descriptor(),
		(&observerv1.Node{}).ProtoReflect().Descriptor(),
		(&observerv1.Workload{}).ProtoReflect().Descriptor(),
		(&observerv1.Edge{}).ProtoReflect().Descriptor(),
	} {
		for i := range md.Fields().Len() {
			known[string(md.Fields().Get(i).Name())] = true
		}
	}
	// A document as /api/v1/map serves it, one edge between two workloads.
	metrics := aggregate.FlowMetrics()
	s := aggregate.Series{
		Key: aggregate.Key{
			Src: aggregate.Workload{Name: "checkout", Kind: "deployment", Namespace: "shop", Zone: "z1"},
			Dst: aggregate.Workload{Name: "cart", Kind: "deployment", Namespace: "shop", Zone: "z1"},
		},
		Values: make([]uint64, len(metrics)),
	}
	s.Values[aggregate.TCPBytes] = 12345
	doc, err := servicemap.MarshalJSON(&observerv1.GetServiceMapResponse{
		Map: servicemap.Build(time.Now(), aggregate.LevelWorkload, metrics, []aggregate.Series{s}),
	})
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				keys[k] = true
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(v)
	for _, f := range fields {
		if !known[f] {
			t.Errorf("map.js reads %q, no field of the map's messages", f)
		}
		if !keys[f] {
			t.Errorf("map.js reads %q, absent from the /api/v1/map document %s", f, doc)
		}
	}
	names := map[string]aggregate.MetricType{}
	for _, m := range metrics {
		names[m.Name] = m.Type
	}
	values, hist := pageValues(t, js)
	if len(values) < 5 {
		t.Fatalf("found %d value names in map.js", len(values))
	}
	for _, n := range values {
		if typ, ok := names[n]; !ok || typ == aggregate.MetricHistogram {
			t.Errorf("map.js looks up the value %q, which is no counter or gauge of the reducer", n)
		}
	}
	if names[hist] != aggregate.MetricHistogram {
		t.Errorf("map.js reads the histogram %q, which the reducer does not export as one", hist)
	}
}
