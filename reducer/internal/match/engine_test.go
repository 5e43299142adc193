package match

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHandleLifetimes(t *testing.T) {
	procCurl := Process{Handle: 1, PID: 100, Comm: "curl"}
	s1 := sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true)
	s2 := sock(2, 1, RoleClient, "10.0.0.1:40001", "10.0.0.2:80", true)
	tests := []struct {
		name    string
		batches []Batch // all but the last must apply
		reason  Reason  // of the last batch; "" when it applies
		msg     string
	}{
		{
			name:    "unknown socket in stats",
			batches: []Batch{{Stats: statsOf(stat{handle: 42, sent: 1})}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: stats entry 0: unknown socket handle 42",
		},
		{
			name: "unknown socket in later stats entry",
			batches: []Batch{{Processes: []Process{procCurl}, Sockets: []Socket{s1},
				Stats: statsOf(stat{handle: 1}, stat{handle: 7})}},
			reason: ReasonUnknownHandle,
			msg:    "batch 1: stats entry 1: unknown socket handle 7",
		},
		{
			name: "duplicate live socket",
			batches: []Batch{
				{Processes: []Process{procCurl}, Sockets: []Socket{s1}},
				{Sockets: []Socket{s1}},
			},
			reason: ReasonDuplicateHandle,
			msg:    "batch 2: socket 0: handle 1 is already live",
		},
		{
			name:    "socket announced twice in one batch",
			batches: []Batch{{Processes: []Process{procCurl}, Sockets: []Socket{s1, s1}}},
			reason:  ReasonDuplicateHandle,
			msg:     "batch 1: socket 1: handle 1 announced twice",
		},
		{
			name:    "duplicate live process",
			batches: []Batch{{Processes: []Process{procCurl}}, {Processes: []Process{procCurl}}},
			reason:  ReasonDuplicateHandle,
			msg:     "batch 2: process 0: handle 1 is already live",
		},
		{
			name:    "process handle zero",
			batches: []Batch{{Processes: []Process{{Handle: 0, Comm: "x"}}}},
			reason:  ReasonInvalidHandle,
			msg:     "batch 1: process 0: handle 0 is reserved",
		},
		{
			name:    "socket of unknown process",
			batches: []Batch{{Sockets: []Socket{s1}}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: socket 0: unknown process handle 1",
		},
		{
			name:    "owner of unknown socket",
			batches: []Batch{{Processes: []Process{procCurl}, Owners: []Owner{{Socket: 9, Process: 1}}}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: owner 0: unknown socket handle 9",
		},
		{
			name:    "owner with unknown process",
			batches: []Batch{{Processes: []Process{procCurl}, Sockets: []Socket{s1}, Owners: []Owner{{Socket: 1, Process: 3}}}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: owner 0: unknown process handle 3",
		},
		{
			name:    "close of unknown socket",
			batches: []Batch{{Closed: []uint32{5}}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: closed socket 0: unknown socket handle 5",
		},
		{
			name:    "closed twice",
			batches: []Batch{{Processes: []Process{procCurl}, Sockets: []Socket{s1}, Closed: []uint32{1, 1}}},
			reason:  ReasonDuplicateHandle,
			msg:     "batch 1: closed socket 1: handle 1 closed twice",
		},
		{
			name: "stats after close",
			batches: []Batch{
				{Processes: []Process{procCurl}, Sockets: []Socket{s1}, Closed: []uint32{1}},
				{Stats: statsOf(stat{handle: 1, sent: 3})},
			},
			reason: ReasonUnknownHandle,
			msg:    "batch 2: stats entry 0: unknown socket handle 1",
		},
		{
			name: "close frees the handle for a new socket",
			batches: []Batch{
				{Processes: []Process{procCurl}, Sockets: []Socket{s1}},
				{Closed: []uint32{1}},
				{Sockets: []Socket{{Handle: 1, Process: 1, Local: s2.Local, Remote: s2.Remote}}, Stats: statsOf(stat{handle: 1, sent: 3})},
			},
		},
		{
			name: "forgotten process handle is unknown afterwards",
			batches: []Batch{
				{Processes: []Process{procCurl}, Sockets: []Socket{s1}},
				{Forgotten: []uint32{1}},
				{Sockets: []Socket{s2}},
			},
			reason: ReasonUnknownHandle,
			msg:    "batch 3: socket 0: unknown process handle 1",
		},
		{
			name: "forgotten process handle can be reused",
			batches: []Batch{
				{Processes: []Process{procCurl}, Forgotten: []uint32{1}},
				{Processes: []Process{procCurl}},
			},
		},
		{
			name:    "forget unknown process",
			batches: []Batch{{Forgotten: []uint32{4}}},
			reason:  ReasonUnknownHandle,
			msg:     "batch 1: forgotten process 0: unknown process handle 4",
		},
		{
			name:    "announced, reported and closed in one batch",
			batches: []Batch{{Processes: []Process{procCurl}, Sockets: []Socket{s1}, Stats: statsOf(stat{handle: 1, sent: 9}), Closed: []uint32{1}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := newTestEngine(t, true)
			s := openSession(t, e, "node-a", 1)
			for i := range tc.batches {
				b := tc.batches[i]
				b.Sequence = uint64(i + 1)
				err := e.Apply(s, &b)
				if i < len(tc.batches)-1 || tc.reason == "" {
					if err != nil {
						t.Fatalf("batch %d: %v", i+1, err)
					}
					continue
				}
				var me *Error
				if !errors.As(err, &me) {
					t.Fatalf("batch %d: got %v, want a refusal", i+1, err)
				}
				if me.Reason != tc.reason || !strings.HasPrefix(me.Msg, tc.msg) {
					t.Errorf("got %s %q, want %s %q", me.Reason, me.Msg, tc.reason, tc.msg)
				}
			}
		})
	}
}

func TestRefusedBatchChangesNothing(t *testing.T) {
	e, _ := newTestEngine(t, true)
	s := openSession(t, e, "node-a", 1)
	bad := Batch{
		Sequence:  1,
		Processes: []Process{{Handle: 1, Comm: "curl"}},
		Sockets:   []Socket{sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true)},
		Stats:     statsOf(stat{handle: 1, sent: 10}, stat{handle: 2, sent: 10}),
	}
	if err := e.Apply(s, &bad); err == nil {
		t.Fatal("batch with an unknown handle applied")
	}
	if got := edgeLines(e); len(got) != 0 {
		t.Errorf("edges after a refused batch: %v", got)
	}
	if sockets, flows, _ := e.Counts(); sockets != 0 || flows != 0 {
		t.Errorf("sockets=%d flows=%d after a refused batch, want 0 0", sockets, flows)
	}
	// The refused batch's handles were not taken.
	bad.Stats = statsOf(stat{handle: 1, sent: 10})
	if err := e.Apply(s, &bad); err != nil {
		t.Fatalf("same batch without the unknown handle: %v", err)
	}
}

// client and server ends of one connection between two nodes.
var (
	clientEnd = sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", true)
	serverEnd = sock(1, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true)
)

func TestJoin(t *testing.T) {
	type step struct {
		node  string // "a" runs curl (client), "b" runs nginx (server)
		batch Batch
	}
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	tests := []struct {
		name  string
		steps []step
		want  []string
	}{
		{
			name: "one end seen",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3})}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=100 packets=2 opened=1 active=1",
				"10.0.0.2/external -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "both ends seen, each byte once",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}}},
				{"b", Batch{Processes: nginx, Sockets: []Socket{serverEnd}}},
				{"a", Batch{Stats: statsOf(stat{1, 100, 500, 2, 3})}},
				{"b", Batch{Stats: statsOf(stat{1, 500, 100, 3, 2})}},
				// The receiver saw more than the sender's acknowledged bytes.
				{"a", Batch{Stats: statsOf(stat{1, 50, 0, 1, 0})}},
				{"b", Batch{Stats: statsOf(stat{1, 0, 60, 0, 1})}},
			},
			want: []string{
				// Opened when the client's end arrived, before its peer joined.
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0",
				"curl/process -> nginx/process bytes=160 packets=3 opened=0 active=1",
				"nginx/process -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "server end first, client joins later",
			steps: []step{
				{"b", Batch{Processes: nginx, Sockets: []Socket{serverEnd}, Stats: statsOf(stat{1, 500, 100, 3, 2})}},
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3})}},
				{"a", Batch{Stats: statsOf(stat{1, 10, 20, 1, 1})}},
				{"b", Batch{Stats: statsOf(stat{1, 20, 10, 1, 1})}},
			},
			want: []string{
				// Counted while the client was unknown; it stays there.
				"10.0.0.1/external -> nginx/process bytes=100 packets=2 opened=1 active=0",
				"nginx/process -> 10.0.0.1/external bytes=500 packets=3 opened=0 active=0",
				"curl/process -> nginx/process bytes=10 packets=1 opened=0 active=1",
				"nginx/process -> curl/process bytes=20 packets=1 opened=0 active=0",
			},
		},
		{
			name: "both announced before either reports, reports in either order",
			steps: []step{
				{"b", Batch{Processes: nginx, Sockets: []Socket{serverEnd}}},
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}}},
				{"b", Batch{Stats: statsOf(stat{1, 500, 100, 3, 2})}},
				{"a", Batch{Stats: statsOf(stat{1, 100, 500, 2, 3})}},
			},
			want: []string{
				"10.0.0.1/external -> nginx/process bytes=0 packets=0 opened=1 active=0",
				"curl/process -> nginx/process bytes=100 packets=2 opened=0 active=1",
				"nginx/process -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "close before the first report",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3}), Closed: []uint32{1}}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=100 packets=2 opened=1 active=0",
				"10.0.0.2/external -> curl/process bytes=500 packets=3 opened=0 active=0",
			},
		},
		{
			name: "both ends close",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}}},
				{"b", Batch{Processes: nginx, Sockets: []Socket{serverEnd}}},
				{"a", Batch{Stats: statsOf(stat{1, 7, 0, 1, 0}), Closed: []uint32{1}}},
				{"b", Batch{Stats: statsOf(stat{1, 0, 7, 0, 1}), Closed: []uint32{1}}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0",
				// The closed client end keeps its workload; the receiver's
				// late report of the same 7 bytes adds nothing.
				"curl/process -> nginx/process bytes=7 packets=1 opened=0 active=0",
			},
		},
		{
			name: "socket found already open counts as active, not opened",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", false)}}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=0 active=1",
			},
		},
		{
			name: "no role known: the higher port is the client",
			steps: []step{
				{"b", Batch{Processes: nginx, Sockets: []Socket{sock(1, 1, RoleUnspecified, "10.0.0.2:80", "10.0.0.1:40000", true)}}},
			},
			want: []string{
				"10.0.0.1/external -> nginx/process bytes=0 packets=0 opened=1 active=1",
			},
		},
		{
			name: "owner becomes known",
			steps: []step{
				{"b", Batch{Processes: nginx, Sockets: []Socket{sock(1, 0, RoleServer, "10.0.0.2:80", "10.0.0.1:40000", true)}, Stats: statsOf(stat{1, 5, 0, 1, 0})}},
				{"b", Batch{Owners: []Owner{{Socket: 1, Process: 1}}, Stats: statsOf(stat{1, 6, 0, 1, 0})}},
			},
			want: []string{
				"10.0.0.1/external -> unknown/process bytes=0 packets=0 opened=1 active=0",
				"unknown/process -> 10.0.0.1/external bytes=5 packets=1 opened=0 active=0",
				"10.0.0.1/external -> nginx/process bytes=0 packets=0 opened=0 active=1",
				"nginx/process -> 10.0.0.1/external bytes=6 packets=1 opened=0 active=0",
			},
		},
		{
			name: "forgotten process: the socket keeps its workload",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}}},
				{"a", Batch{Forgotten: []uint32{1}}},
				{"a", Batch{Stats: statsOf(stat{1, 4, 0, 1, 0})}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=4 packets=1 opened=1 active=1",
			},
		},
		{
			name: "IPv4-mapped end joins its IPv4 peer",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{clientEnd}}},
				{"b", Batch{Processes: nginx, Sockets: []Socket{sock(1, 1, RoleServer, "[::ffff:10.0.0.2]:80", "[::ffff:10.0.0.1]:40000", true)}}},
				{"b", Batch{Stats: statsOf(stat{1, 3, 0, 1, 0})}},
			},
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0",
				"curl/process -> nginx/process bytes=0 packets=0 opened=0 active=1",
				"nginx/process -> curl/process bytes=3 packets=1 opened=0 active=0",
			},
		},
		{
			name: "IPv6 ends join",
			steps: []step{
				{"a", Batch{Processes: curl, Sockets: []Socket{sock(1, 1, RoleClient, "[2001:db8::1]:40000", "[2001:db8::2]:443", true)}}},
				{"b", Batch{Processes: nginx, Sockets: []Socket{sock(1, 1, RoleServer, "[2001:db8::2]:443", "[2001:db8::1]:40000", true)}}},
				{"a", Batch{Stats: statsOf(stat{1, 11, 22, 1, 2})}},
				{"b", Batch{Stats: statsOf(stat{1, 22, 11, 2, 1})}},
			},
			want: []string{
				"curl/process -> 2001:db8::2/external bytes=0 packets=0 opened=1 active=0",
				"curl/process -> nginx/process bytes=11 packets=1 opened=0 active=1",
				"nginx/process -> curl/process bytes=22 packets=2 opened=0 active=0",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, true)
			sessions := map[string]*Session{"a": openSession(t, e, "node-a", 1), "b": openSession(t, e, "node-b", 1)}
			seq := map[string]uint64{}
			for i, st := range tc.steps {
				c.advance(time.Second)
				seq[st.node]++
				b := st.batch
				b.Sequence = seq[st.node]
				if err := e.Apply(sessions[st.node], &b); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			sameLines(t, edgeLines(e), tc.want)
		})
	}
}
