package match

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// TestProcessLevel: at the process level an edge keeps its workloads and
// adds the comm of the process owning each end's socket, so two processes
// of one workload talking to another make two edges; an end with no
// process (external) has an empty process.
func TestProcessLevel(t *testing.T) {
	const (
		frontend = "aaaaaaaaaaaa" // container ids: the workloads
		backend  = "bbbbbbbbbbbb"
	)
	clientNode := Batch{
		Sequence: 1,
		Processes: []Process{
			{Handle: 1, Comm: "curl", ContainerID: frontend},
			{Handle: 2, Comm: "python3", ContainerID: frontend},
		},
		Sockets: []Socket{
			sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true),
			sock(2, 2, RoleClient, "10.0.0.1:40001", "10.0.0.2:80", true),
			sock(3, 1, RoleClient, "10.0.0.1:40002", "192.0.2.1:443", true),
		},
	}
	clientStats := Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 0, 2, 0}, stat{2, 30, 0, 1, 0}, stat{3, 5, 0, 1, 0})}
	serverNode := Batch{
		Sequence:  1,
		Processes: []Process{{Handle: 1, Comm: "nginx", ContainerID: backend}},
		Sockets: []Socket{
			sock(1, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true),
			sock(2, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40001", true),
		},
	}
	serverStats := Batch{Sequence: 2, Stats: statsOf(stat{1, 1000, 0, 3, 0})}
	tests := []struct {
		level aggregate.Level
		want  []string
	}{
		{
			level: aggregate.LevelWorkload,
			want: []string{
				// Opened when the client's ends arrived, before their peers joined.
				"aaaaaaaaaaaa/container/ -> 10.0.0.2/external/ bytes=0 packets=0 opened=2 active=0",
				"aaaaaaaaaaaa/container/ -> bbbbbbbbbbbb/container/ bytes=130 packets=3 opened=0 active=2",
				"bbbbbbbbbbbb/container/ -> aaaaaaaaaaaa/container/ bytes=1000 packets=3 opened=0 active=0",
				"aaaaaaaaaaaa/container/ -> 192.0.2.1/external/ bytes=5 packets=1 opened=1 active=1",
			},
		},
		{
			level: aggregate.LevelProcess,
			want: []string{
				"aaaaaaaaaaaa/container/curl -> 10.0.0.2/external/ bytes=0 packets=0 opened=1 active=0",
				"aaaaaaaaaaaa/container/python3 -> 10.0.0.2/external/ bytes=0 packets=0 opened=1 active=0",
				"aaaaaaaaaaaa/container/curl -> bbbbbbbbbbbb/container/nginx bytes=100 packets=2 opened=0 active=1",
				"aaaaaaaaaaaa/container/python3 -> bbbbbbbbbbbb/container/nginx bytes=30 packets=1 opened=0 active=1",
				"bbbbbbbbbbbb/container/nginx -> aaaaaaaaaaaa/container/curl bytes=1000 packets=3 opened=0 active=0",
				"aaaaaaaaaaaa/container/curl -> 192.0.2.1/external/ bytes=5 packets=1 opened=1 active=1",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.level.String(), func(t *testing.T) {
			c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			e, err := New(Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Level: tc.level, Now: c.now},
				prometheus.NewPedanticRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			// Both ends are known before either reports traffic.
			a, b := openSession(t, e, "node-a", 1), openSession(t, e, "node-b", 1)
			apply(t, e, a, clientNode)
			apply(t, e, b, serverNode)
			c.advance(time.Second)
			apply(t, e, a, clientStats)
			apply(t, e, b, serverStats)

			var got []string
			for _, s := range e.Snapshot(nil) {
				got = append(got, fmt.Sprintf("%s/%s/%s -> %s/%s/%s bytes=%d packets=%d opened=%d active=%d",
					s.Key.Src.Name, s.Key.Src.Kind, s.Key.Src.Process, s.Key.Dst.Name, s.Key.Dst.Kind, s.Key.Dst.Process,
					s.Value(aggregate.TCPBytes), s.Value(aggregate.TCPPackets), s.Value(aggregate.TCPConnectionsOpened), s.Value(aggregate.TCPActiveConnections)))

				labels := tc.level.Labels()
				vals := s.Key.Values(tc.level, nil)
				if len(labels) != len(vals) {
					t.Fatalf("%d labels, %d values", len(labels), len(vals))
				}
				if hasProcess := slices.Contains(labels, "src_process"); hasProcess != (tc.level == aggregate.LevelProcess) {
					t.Errorf("labels %v: src_process present %v", labels, hasProcess)
				}
			}
			slices.Sort(got)
			sameLines(t, got, tc.want)
		})
	}
}
