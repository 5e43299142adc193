package main

import (
	"bytes"
	"context"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

var t0 = time.Date(2026, 11, 27, 4, 51, 2, 123e6, time.UTC)

func wl(name, kind, ns string) *observerv1.Workload {
	return &observerv1.Workload{Name: name, Kind: kind, Namespace: ns}
}

func ep(ip string, port uint32, w *observerv1.Workload) *observerv1.Endpoint {
	return &observerv1.Endpoint{Ip: ip, Port: port, Workload: w, Node: "node-a"}
}

func testMap() *observerv1.ServiceMap {
	web, api, db := wl("web", "deployment", "shop"), wl("api", "deployment", "shop"), wl("postgres", "statefulset", "data")
	return &observerv1.ServiceMap{
		Time:  timestamppb.New(t0),
		Level: "workload",
		Nodes: []*observerv1.Node{
			{Id: "deployment/shop/api", Workload: api}, {Id: "deployment/shop/web", Workload: web},
			{Id: "statefulset/data/postgres", Workload: db},
		},
		Edges: []*observerv1.Edge{
			{SourceId: "deployment/shop/api", DestinationId: "statefulset/data/postgres", Source: api, Destination: db,
				TcpBytes: 3 << 30, TcpPackets: 2_345_678, TcpConnectionsOpened: 1200, TcpActiveConnections: 12},
			{SourceId: "deployment/shop/web", DestinationId: "deployment/shop/api", Source: web, Destination: api,
				TcpBytes: 1536, TcpPackets: 4, TcpConnectionsOpened: 1, TcpActiveConnections: 1},
			{SourceId: "deployment/shop/api", DestinationId: "deployment/shop/web", Source: api, Destination: web,
				TcpBytes: 999, TcpPackets: 3},
		},
	}
}

func TestGolden(t *testing.T) {
	t.Setenv("NO_COLOR", "")
	var buf bytes.Buffer
	p := &printer{w: &buf, loc: time.UTC}

	client := ep("198.18.0.1", 43210, wl("flowcli", "process", ""))
	server := ep("198.18.0.2", 8080, wl("flowsrv", "process", ""))
	p.flow(&observerv1.Flow{Time: timestamppb.New(t0), Type: observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN, Source: client, Destination: server})
	p.flow(&observerv1.Flow{Time: timestamppb.New(t0.Add(time.Second)), Type: observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE,
		Source: client, Destination: server, Bytes: 1 << 20, Packets: 800, TotalBytes: 1<<20 + 4096, TotalPackets: 803})
	p.flow(&observerv1.Flow{Time: timestamppb.New(t0.Add(time.Second)), Type: observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE,
		Source: server, Destination: client, Bytes: 4096, Packets: 3, TotalBytes: 1<<20 + 4096, TotalPackets: 803})
	p.lost(&observerv1.LostEvents{Source: observerv1.LostEventsSource_LOST_EVENTS_SOURCE_OBSERVER_STREAM, NumEventsLost: 42})
	p.lost(&observerv1.LostEvents{Source: observerv1.LostEventsSource_LOST_EVENTS_SOURCE_REDUCER, NumEventsLost: 7})
	p.flow(&observerv1.Flow{Time: timestamppb.New(t0.Add(2 * time.Second)), Type: observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN,
		Source: ep("2001:2::1", 50000, nil), Destination: ep("2001:2::2", 443, wl("api", "deployment", "shop"))})
	p.flow(&observerv1.Flow{Time: timestamppb.New(t0.Add(3 * time.Second)), Type: observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE,
		Source: client, Destination: server, TotalBytes: 1<<20 + 4096, TotalPackets: 803})
	golden(t, "observe.golden", buf.Bytes())

	buf.Reset()
	p.mapTable(testMap())
	golden(t, "map.golden", buf.Bytes())

	buf.Reset()
	mapDot(&buf, testMap())
	golden(t, "map.dot.golden", buf.Bytes())

	buf.Reset()
	p.status(&observerv1.GetStatusResponse{
		Version: "v0.3.0", StartedAt: timestamppb.New(t0.Add(-3*time.Minute - 12*time.Second)), Level: "workload",
		Series: 3, Flows: 14, Sockets: 28, Observers: 1, MaxObservers: 16,
		Collectors: []*observerv1.Collector{
			{Node: "node-a", Version: "v0.3.0", KernelRelease: "6.18.0", Epoch: 2, ConnectedAt: timestamppb.New(t0.Add(-time.Minute)),
				Lag: durationpb.New(850 * time.Millisecond), Messages: 61},
			{Node: "node-b", Version: "v0.2.9", KernelRelease: "6.1.0-47-cloud-amd64", Epoch: 1, ConnectedAt: timestamppb.New(t0.Add(-2 * time.Minute)),
				Lag: durationpb.New(31 * time.Second), Messages: 90},
		},
		Losses: []*observerv1.Loss{
			{Metric: "weir_reducer_collector_loss_total", Reason: "ring_full", Count: 7},
			{Metric: "weir_reducer_observer_lost_total"},
		},
	}, t0)
	golden(t, "status.golden", buf.Bytes())
}

func TestColor(t *testing.T) {
	var buf bytes.Buffer
	p := &printer{w: &buf, loc: time.UTC, color: true}
	p.lost(&observerv1.LostEvents{NumEventsLost: 1})
	if !strings.HasPrefix(buf.String(), yellow) {
		t.Errorf("no colour on a terminal: %q", buf.String())
	}
	// Not a terminal, or NO_COLOR: no colour.
	if useColor(&buf) {
		t.Error("colour on a buffer")
	}
	t.Setenv("NO_COLOR", "1")
	if useColor(os.Stdout) {
		t.Error("colour with NO_COLOR")
	}
}

func TestFormatNumbers(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 150 << 20: "150 MiB", 3 << 30: "3.0 GiB"} {
		if got := bytesIEC(n); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 2345678: "2,345,678", 100000: "100,000"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestUsageAndErrors(t *testing.T) {
	// A port where nothing listens.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	_ = lis.Close()
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, 2, "Commands:"},
		{"unknown command", []string{"graph"}, 2, `unknown command "graph"`},
		{"bad output", []string{"map", "-o", "yaml"}, 2, `-o "yaml": want one of table, json, dot`},
		{"half tls", []string{"status", "--tls-cert", "c.pem"}, 2, "set --tls-cert, --tls-key and --tls-ca together"},
		{"bad port", []string{"observe", "--port", "http"}, 2, `--port "http"`},
		{"bad since", []string{"observe", "--since", "yesterday"}, 2, `--since "yesterday"`},
		{"unreachable", []string{"map", "--server", closed, "--timeout", "3s"}, 1, "cannot reach the reducer at " + closed},
		{"missing cert", []string{"status", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "k", "--tls-ca", "a"}, 1, "--tls-cert/--tls-key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errb.String(), tc.code, tc.stderr)
			}
		})
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "weirctl ") {
		t.Errorf("version: %d %q", code, out.String())
	}
}

func TestParseSince(t *testing.T) {
	now := t0
	if got, err := parseSince("5m", now); err != nil || !got.Equal(now.Add(-5*time.Minute)) {
		t.Errorf("5m: %v %v", got, err)
	}
	if got, err := parseSince("2026-11-27T04:00:00Z", now); err != nil || got.Hour() != 4 || got.Minute() != 0 {
		t.Errorf("RFC 3339: %v %v", got, err)
	}
	if _, err := parseSince("-5m", now); err == nil {
		t.Error("negative duration accepted")
	}
}

func TestApplyChange(t *testing.T) {
	m := testMap()
	web := m.Edges[1]
	grown := proto.Clone(web).(*observerv1.Edge)
	grown.TcpBytes = 4 << 30
	ch := &observerv1.ServiceMapChange{
		Time:         timestamppb.New(t0.Add(5 * time.Second)),
		EdgesUpdated: []*observerv1.Edge{grown},
		EdgesRemoved: []*observerv1.Edge{{SourceId: "deployment/shop/api", DestinationId: "deployment/shop/web"}},
		NodesRemoved: []string{"nobody"},
	}
	got := applyChange(m, ch)
	if len(got.Edges) != 2 || got.Edges[0].TcpBytes != 4<<30 || got.Edges[0].SourceId != "deployment/shop/web" ||
		got.Edges[1].DestinationId != "statefulset/data/postgres" || len(got.Nodes) != 3 || !got.Time.AsTime().Equal(t0.Add(5*time.Second)) {
		t.Errorf("applied: %v", got)
	}
}
