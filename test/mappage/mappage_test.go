// Package mappage tests the reducer's /map page in a real browser (Debian's
// headless Chromium, driven by chromedp): real traffic between two network
// namespaces through a real collector and reducer is drawn with the bytes
// of /api/v1/map, hover and click show an edge's metrics, the filters and
// the auto-refresh work; and a map of 250 workloads is drawn and laid out.
package mappage

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	cliName = "mapcli"
	srvName = "mapsrv"
)

// browser returns the path of Debian's headless Chromium. make test
// installs it (chromium-headless-shell).
func browser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium-headless-shell", "chromium", "headless-shell"} {
		if p, err := osexec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no headless Chromium (apt-get install chromium-headless-shell): refusing to skip under CI=true")
	}
	t.Skip("no headless Chromium: apt-get install chromium-headless-shell")
	return ""
}

// newBrowser starts Chromium and returns a context of one tab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser(t)),
		chromedp.NoSandbox, // as root
		chromedp.WindowSize(1400, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", browser(t), err)
	}
	return ctx
}

// screenshot saves the page as name under the test's artifact directory, and
// under $WEIR_BIN_DIR/screenshots when set (make test).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dirs := []string{t.ArtifactDir()}
	if bin := os.Getenv("WEIR_BIN_DIR"); bin != "" {
		dirs = append(dirs, filepath.Join(bin, "screenshots"))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s (%d bytes)", p, len(png))
	}
}

// peers copies flowcli and flowsrv under names of their own, so that the
// map names them mapcli and mapsrv.
func peers(t *testing.T) (cli, srv string) {
	t.Helper()
	bin, dir := harness.Binaries(t), t.TempDir()
	for from, to := range map[string]string{"flowcli": cliName, "flowsrv": srvName} {
		b, err := os.ReadFile(filepath.Join(bin, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, cliName), filepath.Join(dir, srvName)
}

// traffic runs one connection from a to b:port with exact sizes.
func traffic(t *testing.T, a, b harness.Host, port, request, response int) {
	t.Helper()
	cli, srv := peers(t)
	listen := net.JoinHostPort(b.IPv4, strconv.Itoa(port))
	sizes := []string{"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response)}
	s := harness.Start(t, srvName, b.Exec(append([]string{srv, "-listen", listen, "-conns", "1"}, sizes...)...)...)
	s.WaitLine(t, "listening", 10*time.Second)
	c := harness.Start(t, cliName, a.Exec(append([]string{cli, "-connect", listen, "-conns", "1"}, sizes...)...)...)
	if err := c.Wait(20 * time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", cliName, err, c.Stderr())
	}
	if err := s.Wait(10 * time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", srvName, err, s.Stderr())
	}
}

// apiMap is the part of /api/v1/map the test reads.
type apiMap struct {
	Map struct {
		Nodes []struct {
			ID string `json:"id"`
		} `json:"nodes"`
		Edges []struct {
			SourceID      string            `json:"source_id"`
			DestinationID string            `json:"destination_id"`
			TCPBytes      string            `json:"tcp_bytes"`
			Values        map[string]string `json:"values"`
		} `json:"edges"`
	} `json:"map"`
}

func getMap(t *testing.T, base string) apiMap {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/map")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m apiMap
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("/api/v1/map: %v", err)
	}
	return m
}

// edgeBytes is the TCP bytes of the edge src → dst on /api/v1/map, -1 when
// there is none.
func edgeBytes(m apiMap, src, dst string) int64 {
	for _, e := range m.Map.Edges {
		if e.SourceID == src && e.DestinationID == dst {
			n, _ := strconv.ParseInt(e.TCPBytes, 10, 64)
			return n
		}
	}
	return -1
}

// waitEdge waits until /api/v1/map shows want bytes from src to dst.
func waitEdge(t *testing.T, base, src, dst string, want int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got int64
	for time.Now().Before(deadline) {
		if got = edgeBytes(getMap(t, base), src, dst); got == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("/api/v1/map: %s → %s has %d bytes, want %d", src, dst, got, want)
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// exec runs JavaScript statements in the page.
func exec(t *testing.T, ctx context.Context, stmts string) {
	t.Helper()
	if !eval[bool](t, ctx, "(() => { "+stmts+"; return true; })()") {
		t.Fatalf("run %s: false", stmts)
	}
}

// waitJS polls a boolean JavaScript expression until it is true.
func waitJS(t *testing.T, ctx context.Context, what, expr string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if eval[bool](t, ctx, expr) {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (%s)", what, timeout, expr)
	return 0
}

// TestPrivilegedMapPage draws the map of real traffic in Chromium.
func TestPrivilegedMapPage(t *testing.T) {
	harness.RequireRoot(t)
	ctx := newBrowser(t)
	a, b := harness.BridgedHosts(t, "mapp")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second})
	base := strings.TrimSuffix(w.MetricsURL, "/metrics")
	const (
		request  = 300_007
		response = 40_009
	)
	cli, srv := "process//"+cliName, "process//"+srvName
	traffic(t, a, b, 8090, request, response)
	waitEdge(t, base, cli, srv, request)
	waitEdge(t, base, srv, cli, response)

	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/map")); err != nil {
		t.Fatal(err)
	}
	edgeSel := fmt.Sprintf(`path.edge[data-source=%q][data-target=%q]`, cli, srv)
	waitJS(t, ctx, "the edge of the known flow drawn", fmt.Sprintf("document.querySelector(%q) !== null", edgeSel), 15*time.Second)

	// Both workloads are drawn inside the picture, and the edge carries the
	// bytes of /api/v1/map.
	for _, name := range []string{cliName, srvName} {
		inside := eval[bool](t, ctx, fmt.Sprintf(`(() => {
			const n = document.querySelector('g.node[data-name=%q] circle');
			if (!n) return false;
			const r = n.getBoundingClientRect(), s = document.getElementById('map').getBoundingClientRect();
			return r.width > 4 && r.left >= s.left && r.right <= s.right && r.top >= s.top && r.bottom <= s.bottom;
		})()`, name))
		if !inside {
			t.Errorf("workload %s is not drawn inside the map", name)
		}
	}
	if got := eval[string](t, ctx, fmt.Sprintf("document.querySelector(%q).dataset.tcpBytes", edgeSel)); got != strconv.Itoa(request) {
		t.Errorf("the page draws %s → %s with %s TCP bytes, want %d", cliName, srvName, got, request)
	}
	if got := eval[string](t, ctx, fmt.Sprintf("document.querySelector(%q).dataset.tcpBytes", fmt.Sprintf(`path.edge[data-source=%q][data-target=%q]`, srv, cli))); got != strconv.Itoa(response) {
		t.Errorf("the page draws %s → %s with %s TCP bytes, want %d", srvName, cliName, got, response)
	}
	// The edge's width grows with its bytes: the request side is wider.
	wider := eval[bool](t, ctx, fmt.Sprintf(`+document.querySelector(%q).getAttribute('stroke-width') > +document.querySelector('path.edge[data-source=%q][data-target=%q]').getAttribute('stroke-width')`, edgeSel, srv, cli))
	if !wider {
		t.Errorf("the %d-byte edge is not wider than the %d-byte one", request, response)
	}

	// Hover shows the edge's metrics, RTT included (from /metrics).
	tipText := eval[string](t, ctx, fmt.Sprintf(`(() => {
		const e = document.querySelector(%q), r = e.getBoundingClientRect();
		e.dispatchEvent(new MouseEvent('mouseenter', {clientX: r.left + r.width / 2, clientY: r.top + r.height / 2}));
		return document.getElementById('tip').hidden ? '' : document.getElementById('tip').innerText;
	})()`, edgeSel))
	for _, want := range []string{cliName + " [process]", srvName + " [process]", "TCP bytes\t293.0 KiB", "connections opened\t1", "retransmits\t0", "RTT (mean)"} {
		if !strings.Contains(tipText, want) {
			t.Errorf("hover over the edge shows %q, want it to contain %q", tipText, want)
		}
	}
	// A click keeps the details, with every value of the edge.
	exec(t, ctx, fmt.Sprintf(`document.querySelector(%q).dispatchEvent(new MouseEvent('click', {bubbles: true}))`, edgeSel))
	details := eval[string](t, ctx, `document.getElementById('detail-body').innerText`)
	for _, want := range []string{"weir_tcp_bytes_total\t" + fmtInt(request), "weir_tcp_packets_total", "TCP bytes\t293.0 KiB"} {
		if !strings.Contains(details, want) {
			t.Errorf("details after a click: %q, want %q", details, want)
		}
	}
	screenshot(t, ctx, "map.png")

	// Filters: the workload search keeps only the edges of mapsrv; the kind
	// filter "external" hides them.
	setFilter := func(id, value, event string) {
		t.Helper()
		exec(t, ctx, fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %q; e.dispatchEvent(new Event(%q)); })()`, id, value, event))
	}
	setFilter("q", srvName, "input")
	bad := eval[[]string](t, ctx, fmt.Sprintf(`[...document.querySelectorAll('path.edge')].filter(e => e.dataset.source !== %q && e.dataset.target !== %q).map(e => e.dataset.source + ' → ' + e.dataset.target)`, srv, srv))
	if len(bad) > 0 || eval[int](t, ctx, `document.querySelectorAll('path.edge').length`) != 2 {
		t.Errorf("search %q: drawn edges not of %s: %v", srvName, srvName, bad)
	}
	setFilter("q", "", "input")
	setFilter("kind", "process", "change")
	if n := eval[int](t, ctx, fmt.Sprintf("document.querySelectorAll(%q).length", edgeSel)); n != 1 {
		t.Errorf("kind process: the edge is drawn %d times, want 1", n)
	}
	kinds := eval[[]string](t, ctx, `[...document.getElementById('kind').options].map(o => o.value)`)
	t.Logf("kind filter offers %v", kinds)
	setFilter("kind", "", "change")

	// Auto-refresh: more traffic on a new connection shows without a reload.
	setFilter("refresh", "2", "change")
	fetches := eval[int](t, ctx, `window.weirMap.fetches`)
	traffic(t, a, b, 8090, request, response)
	waitEdge(t, base, cli, srv, 2*request)
	took := waitJS(t, ctx, "the page's refresh of the edge", fmt.Sprintf("document.querySelector(%q)?.dataset.tcpBytes === %q", edgeSel, strconv.Itoa(2*request)), 10*time.Second)
	if n := eval[int](t, ctx, `window.weirMap.fetches`); n <= fetches {
		t.Errorf("fetches %d after %d: the page did not refresh itself", n, fetches)
	}
	if errs := eval[int](t, ctx, `window.weirMap.errors`); errs != 0 {
		t.Errorf("%d failed fetches", errs)
	}
	t.Logf("the page showed the new bytes %s after /api/v1/map did (refresh every 2 s)", took.Round(10*time.Millisecond))
}

func fmtInt(n int) string {
	s := strconv.Itoa(n)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// TestPrivilegedMapPageLarge draws a map of 250 workloads in 12 namespaces
// and 600 edges: the page is the real reducer's, the map a made-up one,
// served in place of /api/v1/map by a proxy in front of the reducer.
func TestPrivilegedMapPageLarge(t *testing.T) {
	harness.RequireRoot(t)
	ctx := newBrowser(t)
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})
	target, err := url.Parse(strings.TrimSuffix(w.MetricsURL, "/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	doc := largeMap(250, 12, 600)
	proxy := httputil.NewSingleHostReverseProxy(target)
	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	mux.HandleFunc("GET /api/v1/map", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})

	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+lis.Addr().String()+"/map")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the first drawing", `document.querySelectorAll('g.node').length > 0`, 15*time.Second)
	first := time.Since(start)
	// Every workload and edge, not only the top 300 edges.
	exec(t, ctx, `(() => { const e = document.getElementById('top'); e.value = '0'; e.dispatchEvent(new Event('change')); })()`)
	if n := eval[int](t, ctx, `document.querySelectorAll('g.node').length`); n != 250 {
		t.Errorf("%d workloads drawn, want 250", n)
	}
	if n := eval[int](t, ctx, `document.querySelectorAll('path.edge').length`); n != 600 {
		t.Errorf("%d edges drawn, want 600", n)
	}
	settled := waitJS(t, ctx, "the layout settling", `window.weirMap.alpha <= 0.02`, 30*time.Second)
	exec(t, ctx, `document.getElementById('fit').click()`)
	// Namespaces are groups: each has its box, and a workload's box is its
	// namespace's.
	if n := eval[int](t, ctx, `document.querySelectorAll('g.group').length`); n != 12 {
		t.Errorf("%d namespace groups drawn, want 12", n)
	}
	// The namespace filter keeps the edges with an end in it.
	exec(t, ctx, `(() => { const e = document.getElementById('ns'); e.value = 'ns-3'; e.dispatchEvent(new Event('change')); })()`)
	bad := eval[int](t, ctx, `[...document.querySelectorAll('path.edge')].filter(e => !e.dataset.source.includes('/ns-3/') && !e.dataset.target.includes('/ns-3/')).length`)
	shown := eval[int](t, ctx, `document.querySelectorAll('path.edge').length`)
	if bad != 0 || shown == 0 {
		t.Errorf("namespace ns-3: %d edges drawn, %d without an end in ns-3", shown, bad)
	}
	exec(t, ctx, `(() => { const e = document.getElementById('ns'); e.value = ''; e.dispatchEvent(new Event('change')); document.getElementById('fit').click(); })()`)
	t.Logf("250 workloads, 600 edges: first drawing %s after navigation, layout settled %s later (machine shared with other builds)",
		first.Round(time.Millisecond), settled.Round(time.Millisecond))
	screenshot(t, ctx, "map-large.png")
}

// largeMap returns a /api/v1/map document of n workloads in ns namespaces
// and e edges, with a few retransmits and resets.
func largeMap(n, ns, e int) []byte {
	type workload struct {
		Name      string `json:"name"`
		Kind      string `json:"kind"`
		Namespace string `json:"namespace"`
		Zone      string `json:"zone"`
		Node      string `json:"node"`
		Pod       string `json:"pod"`
	}
	type node struct {
		ID       string   `json:"id"`
		Workload workload `json:"workload"`
	}
	type edge struct {
		SourceID      string            `json:"source_id"`
		DestinationID string            `json:"destination_id"`
		Source        workload          `json:"source"`
		Destination   workload          `json:"destination"`
		TCPBytes      string            `json:"tcp_bytes"`
		TCPPackets    string            `json:"tcp_packets"`
		Opened        string            `json:"tcp_connections_opened"`
		Active        string            `json:"tcp_active_connections"`
		Values        map[string]string `json:"values"`
	}
	kinds := []string{"deployment", "statefulset", "daemonset", "cronjob", "service"}
	nodes := make([]node, n)
	for i := range nodes {
		w := workload{Name: fmt.Sprintf("svc-%03d", i), Kind: kinds[i%len(kinds)], Namespace: fmt.Sprintf("ns-%d", i%ns), Zone: "z1"}
		nodes[i] = node{ID: w.Kind + "/" + w.Namespace + "/" + w.Name, Workload: w}
	}
	edges := make([]edge, 0, e)
	seen := map[[2]int]bool{}
	rnd := rand.New(rand.NewPCG(1, 2)) // the same map every run
	for k := 0; len(edges) < e; k++ {
		// Mostly within a namespace, some across; every workload a source.
		s := k % n
		if k >= n {
			s = rnd.IntN(n)
		}
		d := (s + ns*(1+rnd.IntN(n/ns-1))) % n
		if rnd.IntN(4) == 0 {
			d = rnd.IntN(n)
		}
		if s == d || seen[[2]int{s, d}] {
			continue
		}
		seen[[2]int{s, d}] = true
		bytes := uint64(1000 + (k*104729)%50_000_000)
		pk := bytes / 1400
		v := map[string]string{
			"weir_tcp_bytes_total":              strconv.FormatUint(bytes, 10),
			"weir_tcp_packets_total":            strconv.FormatUint(pk, 10),
			"weir_tcp_connections_opened_total": "3",
			"weir_tcp_active_connections":       "1",
		}
		if k%13 == 0 {
			v["weir_tcp_retransmits_total"] = strconv.FormatUint(pk/20+1, 10)
		}
		if k%29 == 0 {
			v["weir_tcp_resets_total"] = "2"
		}
		edges = append(edges, edge{SourceID: nodes[s].ID, DestinationID: nodes[d].ID, Source: nodes[s].Workload, Destination: nodes[d].Workload,
			TCPBytes: v["weir_tcp_bytes_total"], TCPPackets: v["weir_tcp_packets_total"], Opened: "3", Active: "1", Values: v})
	}
	out, err := json.Marshal(map[string]any{"map": map[string]any{"time": time.Now().UTC().Format(time.RFC3339Nano), "level": "workload", "nodes": nodes, "edges": edges}})
	if err != nil {
		panic(err)
	}
	return out
}
