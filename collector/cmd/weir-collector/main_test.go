package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/proc"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string // in stderr
	}{
		{name: "version", args: []string{"--version"}},
		{name: "help", args: []string{"-h"}},
		{name: "unknown flag", args: []string{"--nope"}, wantCode: 2, wantErr: "flag provided but not defined: -nope"},
		{name: "stray argument", args: []string{"extra"}, wantCode: 2, wantErr: `unexpected argument "extra"`},
		{name: "bad reducer", args: []string{"--reducer", "localhost"}, wantCode: 2, wantErr: "--reducer:"},
		{name: "interval too short", args: []string{"--interval", "1ms"}, wantCode: 2, wantErr: "--interval:"},
		{name: "empty node name", args: []string{"--node-name", ""}, wantCode: 2, wantErr: "--node-name:"},
		{name: "bad http addr", args: []string{"--http-addr", "7011"}, wantCode: 2, wantErr: "--http-addr:"},
		{name: "zero max sockets", args: []string{"--max-sockets", "0"}, wantCode: 2, wantErr: "--max-sockets:"},
		{name: "max sockets not a number", args: []string{"--max-sockets", "many"}, wantCode: 2, wantErr: `invalid value "many" for flag -max-sockets`},
		{name: "max sockets with an exponent", args: []string{"--max-sockets", "1e3"}, wantCode: 2, wantErr: `invalid value "1e3" for flag -max-sockets: not a plain decimal integer`},
		{name: "max sockets negative", args: []string{"--max-sockets", "-5"}, wantCode: 2, wantErr: `invalid value "-5" for flag -max-sockets`},
		{name: "zero map entries (deprecated alias)", args: []string{"--socket-map-entries", "0"}, wantCode: 2, wantErr: "--socket-map-entries:"},
		{name: "map entries not a number", args: []string{"--socket-map-entries", "many"}, wantCode: 2, wantErr: `invalid value "many" for flag -socket-map-entries`},
		{name: "ring not a power of two", args: []string{"--ring-bytes", "12345"}, wantCode: 2, wantErr: "--ring-bytes:"},
		{name: "ring with an exponent", args: []string{"--ring-bytes", "1e3"}, wantCode: 2, wantErr: `invalid value "1e3" for flag -ring-bytes: not a plain decimal integer`},
		{name: "ring with a unit suffix", args: []string{"--ring-bytes", "4096k"}, wantCode: 2, wantErr: `invalid value "4096k" for flag -ring-bytes: not a plain decimal integer`},
		{name: "ring over 32 bits", args: []string{"--ring-bytes", "8589934592"}, wantCode: 2, wantErr: `invalid value "8589934592" for flag -ring-bytes: out of range`},
		{name: "sample ring not a power of two", args: []string{"--sample-ring-bytes", "12345"}, wantCode: 2, wantErr: "--sample-ring-bytes:"},
		{name: "sample ring below a page", args: []string{"--sample-ring-bytes", "1024"}, wantCode: 2, wantErr: "--sample-ring-bytes:"},
		{name: "sample ring with a unit suffix", args: []string{"--sample-ring-bytes", "8M"}, wantCode: 2, wantErr: `invalid value "8M" for flag -sample-ring-bytes: not a plain decimal integer`},
		{name: "sample ring over 32 bits", args: []string{"--sample-ring-bytes", "8589934592"}, wantCode: 2, wantErr: `invalid value "8589934592" for flag -sample-ring-bytes: out of range`},
		{name: "zero buffer", args: []string{"--buffer-bytes", "0"}, wantCode: 2, wantErr: "--buffer-bytes:"},
		{name: "negative ack timeout", args: []string{"--ack-timeout", "-1s"}, wantCode: 2, wantErr: "--ack-timeout:"},
		{name: "negative ack every", args: []string{"--ack-every", "-1"}, wantCode: 2, wantErr: "--ack-every:"},
		{name: "ack every beyond the ack timeout", args: []string{"--interval", "10s", "--ack-timeout", "30s", "--ack-every", "3"}, wantCode: 2, wantErr: "do not fit in the ack timeout"},
		{name: "buffer with a unit suffix", args: []string{"--buffer-bytes", "8Mi"}, wantCode: 2, wantErr: `invalid value "8Mi" for flag -buffer-bytes: not a plain decimal integer`},
		{name: "buffer in hex", args: []string{"--buffer-bytes", "0x100"}, wantCode: 2, wantErr: `invalid value "0x100" for flag -buffer-bytes`},
		{name: "missing proc root", args: []string{"--proc-root", "/nonexistent/proc"}, wantCode: 2, wantErr: "--proc-root:"},
		{name: "proc root not a directory", args: []string{"--proc-root", "/proc/self/stat"}, wantCode: 2, wantErr: "--proc-root:"},
		{name: "missing netns", args: []string{"--netns", "/run/netns/weir-nonexistent"}, wantCode: 2, wantErr: "--netns: /run/netns/weir-nonexistent:"},
		{name: "netns not a network namespace", args: []string{"--netns", "/proc/self/ns/net,/proc/self/ns/uts"}, wantCode: 2, wantErr: "--netns: /proc/self/ns/uts is not a network namespace"},
		{name: "netns not a namespace", args: []string{"--netns", "/proc/self/stat"}, wantCode: 2, wantErr: "--netns: /proc/self/stat is not a network namespace"},
		{name: "netns empty path", args: []string{"--netns", "/proc/self/ns/net,"}, wantCode: 2, wantErr: `invalid value "/proc/self/ns/net," for flag -netns: empty path`},
		{name: "partial tls", args: []string{"--tls-cert", "c.pem", "--tls-key", "k.pem"}, wantCode: 2, wantErr: "--tls-cert, --tls-key, --tls-ca:"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantCode: 2, wantErr: "--log-level:"},
		{name: "bad probe path", args: []string{"--probe-path", "uprobe"}, wantCode: 2, wantErr: `invalid value "uprobe" for flag -probe-path: "uprobe" is not auto, tracepoint, fentry, hashmap or kprobe`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d with %q", code, stderr.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestDefaultConfigIsValid(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Reducer != "127.0.0.1:7000" || cfg.HTTPAddr != "127.0.0.1:7011" || cfg.Interval != 5*time.Second ||
		cfg.BufferBytes != 8<<20 || cfg.MaxSockets != 65536 || cfg.Probe.RingBytes != 1<<20 || cfg.Probe.Stats ||
		cfg.Probe.SampleRingBytes != probe.DefaultConfig().SampleRingBytes ||
		cfg.ProcRoot != "/proc" || cfg.Probe.ProcRoot != "/proc" || len(cfg.Deprecated) != 0 {
		t.Fatalf("defaults %+v", cfg)
	}
}

func TestIntegerFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want func(Config) bool
	}{
		{name: "plain integers", args: []string{"--ring-bytes", "65536", "--sample-ring-bytes", "131072", "--buffer-bytes", "1048576", "--max-sockets", "1000"}, want: func(c Config) bool {
			return c.Probe.RingBytes == 65536 && c.Probe.SampleRingBytes == 131072 && c.BufferBytes == 1048576 && c.MaxSockets == 1000 && len(c.Deprecated) == 0
		}},
		{name: "deprecated alias", args: []string{"--socket-map-entries", "4096"}, want: func(c Config) bool {
			return c.MaxSockets == 4096 && slices.Equal(c.Deprecated, []string{"socket-map-entries"})
		}},
		{name: "the later flag wins", args: []string{"--socket-map-entries", "4096", "--max-sockets", "100"}, want: func(c Config) bool {
			return c.MaxSockets == 100
		}},
		{name: "netns", args: []string{"--netns", "/proc/self/ns/net,/proc/1/ns/net", "--netns", "/run/netns/x"}, want: func(c Config) bool {
			// Discovery looks in these namespaces only.
			return slices.Equal(c.NetNS, []string{"/proc/self/ns/net", "/proc/1/ns/net", "/run/netns/x"}) && slices.Equal(c.Probe.NetNS, c.NetNS)
		}},
		{name: "bpf stats and proc root", args: []string{"--bpf-stats", "--proc-root", "/host/proc"}, want: func(c Config) bool {
			// Discovery finds the network namespaces there too.
			return c.Probe.Stats && c.ProcRoot == "/host/proc" && c.Probe.ProcRoot == "/host/proc"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(cfg) {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

func TestUnsupportedMessage(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{
			name: "missing tracepoint",
			err:  fmt.Errorf("bpf_sk_storage_get in tp_btf (Linux 5.11): %w", probe.ErrNotSupported),
			want: "bpf_sk_storage_get in tp_btf (Linux 5.11): not supported by this kernel",
		},
		{
			name: "other failure",
			err:  errors.New("kernel BTF: permission denied"),
			want: "feature probe: kernel BTF: permission denied",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := unsupportedMessage(tc.err); got != tc.want {
				t.Fatalf("%q, want %q", got, tc.want)
			}
		})
	}
}

// requireRoot skips a privileged test without root, or fails it in CI.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true)")
		}
		t.Skip("needs root")
	}
}

// startCollector runs the collector against a recording reducer until the
// test ends, and waits for its hello.
func startCollector(t *testing.T, extraArgs ...string) (*recorder, *ingestv1.Hello) {
	t.Helper()
	r := &recorder{batches: make(chan *ingestv1.Batch, 1024), hellos: make(chan *ingestv1.Hello, 4)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ingestv1.RegisterIngestServiceServer(srv, r)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	stderr := &syncBuffer{}
	args := append([]string{"--reducer", ln.Addr().String(), "--interval", "200ms", "--http-addr", "127.0.0.1:0"}, extraArgs...)
	go func() { done <- run(ctx, args, io.Discard, stderr) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit code %d\n%s", code, stderr.String())
		}
		srv.Stop()
		wg.Wait()
	})
	select {
	case h := <-r.hellos:
		return r, h
	case code := <-done:
		done <- code
		t.Fatalf("collector exited with %d\n%s", code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no hello\n%s", stderr.String())
	}
	return nil, nil
}

// TestPrivilegedRun runs the whole collector on this kernel against a test
// reducer and checks that a loopback transfer arrives with its exact bytes,
// attributed to this process on both ends.
func TestPrivilegedRun(t *testing.T) {
	requireRoot(t)
	r, hello := startCollector(t)
	if hello.ProtocolVersion != 1 || hello.MinProtocolVersion != 1 || !slices.Equal(hello.Capabilities, []string{"socket_cookie", "compression_zstd", "sparse_acks"}) {
		t.Fatalf("hello %v", hello)
	}

	const up, down = 100000, 54321
	client, server := transfer(t, up, down)

	c, s := followEnds(t, r, client, server)
	if c.role != ingestv1.Role_ROLE_CLIENT || s.role != ingestv1.Role_ROLE_SERVER {
		t.Errorf("roles: client %v, server %v", c.role, s.role)
	}
	if c.sent != up || c.received != down || s.sent != down || s.received != up {
		t.Errorf("bytes: client sent %d received %d, server sent %d received %d; want %d and %d", c.sent, c.received, s.sent, s.received, up, down)
	}
	if !c.newConn || !s.newConn {
		t.Errorf("new connection: client %v, server %v", c.newConn, s.newConn)
	}
	checkSelf(t, c, s)
}

// TestPrivilegedProbePath forces the probe paths: kprobe is refused with
// its reason (exit 1); hashmap and auto run on every kernel that passes
// probe.Check, and log the path taken; fentry either runs or, on a kernel that does not
// permit it (this development VM: fentry gives EPERM, and there are no
// kprobes), exits 1 with a message naming the path and the reason; the
// default still runs (TestPrivilegedRun), on tracepoints where the kernel
// has them (the probe package's TestPrivilegedForcedPath).
func TestPrivilegedProbePath(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		path, want string
	}{
		{"kprobe", "--probe-path=kprobe: not available: kprobe programs cannot use socket storage"},
		{"fentry", "--probe-path=fentry: "},
		// Every kernel that passes probe.Check runs these; the log lines
		// that name the path and each signal not collected are logged for
		// the kernel matrix's report.
		{"hashmap", ""},
		{"auto", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := []string{"--reducer", "127.0.0.1:1", "--http-addr", "127.0.0.1:0", "--nat=false", "--probe-path", tc.path}
			if tc.path == "auto" {
				args = append(args, "--udp") // so that a kernel without UDP sizes says so
			}
			code := run(ctx, args, &stdout, &stderr)
			if tc.want == "" {
				if code != 0 {
					t.Fatalf("exit %d, stderr %q", code, stderr.String())
				}
				chosen := false
				for l := range strings.SplitSeq(stderr.String(), "\n") {
					if strings.Contains(l, "probe path chosen") || strings.Contains(l, "signal not collected") {
						t.Logf("collector: %s", l)
						chosen = chosen || strings.Contains(l, "probe path chosen")
					}
				}
				if !chosen || tc.path == "hashmap" && !strings.Contains(stderr.String(), "path=hashmap") {
					t.Errorf("the log does not say the path chosen (want %s):\n%s", tc.path, stderr.String())
				}
				return
			}
			if code == 0 && tc.path == "fentry" {
				if !strings.Contains(stderr.String(), "path=fentry") {
					t.Errorf("ran, but the log does not say path=fentry:\n%s", stderr.String())
				}
				t.Log("this kernel permits fentry: the collector ran on it")
				return
			}
			// A kernel that lacks what every path needs (5.10: socket storage
			// from tracing programs) refuses the forced path by that feature.
			byKernel := "--probe-path=" + tc.path + ": "
			kernelRefusal := strings.Contains(stderr.String(), byKernel) && strings.Contains(stderr.String(), "not supported by this kernel")
			if code != 1 || !strings.Contains(stderr.String(), tc.want) && !kernelRefusal {
				t.Fatalf("exit %d, stderr %q; want 1 with %q, or %q and the kernel feature", code, stderr.String(), tc.want, byKernel)
			}
			t.Logf("refused: %s", strings.TrimSpace(stderr.String()))
		})
	}
}

// checkSelf checks that both ends are owned by this process: its pid,
// start time and cgroup.
func checkSelf(t *testing.T, ends ...*end) {
	t.Helper()
	fs, err := proc.New("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self, err := fs.Process(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	cgroup, err := fs.CgroupPath(self.PID, self.StartTime)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ends {
		if e.proc == nil || e.proc.Pid != self.PID || e.proc.StartTime != self.StartTime || e.proc.Cgroup != cgroup {
			t.Errorf("owner %v, want pid %d, start time %d, cgroup %q", e.proc, self.PID, self.StartTime, cgroup)
		}
	}
}

// TestPrivilegedExistingSocket: a connection open before the collector
// starts is found at start, owned by this process, announced as not new,
// and only the bytes moved after that are counted.
func TestPrivilegedExistingSocket(t *testing.T) {
	requireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- conn
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer sc.Close()
	exchange := func(up, down int) {
		t.Helper()
		if _, err := cc.Write(make([]byte, up)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, sc, int64(up)); err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Write(make([]byte, down)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, cc, int64(down)); err != nil {
			t.Fatal(err)
		}
	}
	// Traffic before the start: the baseline, not counted.
	exchange(7000, 9000)
	time.Sleep(100 * time.Millisecond) // the last ACKs arrive

	r, _ := startCollector(t)
	const up, down = 3000, 4000
	exchange(up, down)
	client := cc.LocalAddr().(*net.TCPAddr).AddrPort()
	server := cc.RemoteAddr().(*net.TCPAddr).AddrPort()
	cc.Close()
	sc.Close()

	c, s := followEnds(t, r, unmap(client), unmap(server))
	if c.newConn || s.newConn {
		t.Errorf("new connection: client %v, server %v; want false for sockets found open", c.newConn, s.newConn)
	}
	if c.sent != up || c.received != down || s.sent != down || s.received != up {
		t.Errorf("bytes: client sent %d received %d, server sent %d received %d; want %d and %d", c.sent, c.received, s.sent, s.received, up, down)
	}
	checkSelf(t, c, s)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// end is what a reducer learned about one end of a connection.
type end struct {
	comm     string
	pid      uint32
	proc     *ingestv1.Process
	role     ingestv1.Role
	newConn  bool
	sent     uint64
	received uint64
	closed   bool
}

// followEnds follows the batches as the reducer would until both ends of
// the connection between client and server closed.
func followEnds(t *testing.T, r *recorder, client, server netip.AddrPort) (c, s *end) {
	t.Helper()
	ends := map[netip.AddrPort]*end{client: {}, server: {}}
	procs := map[uint32]*ingestv1.Process{}
	byHandle := map[uint32]*end{}
	owner := map[uint32]uint32{}
	deadline := time.After(30 * time.Second)
	for !ends[client].closed || !ends[server].closed {
		var b *ingestv1.Batch
		select {
		case b = <-r.batches:
		case <-deadline:
			t.Fatalf("ends not both closed: client %+v server %+v", *ends[client], *ends[server])
		}
		for _, p := range b.Processes {
			procs[p.Handle] = p
		}
		for _, s := range b.Sockets {
			local, _ := netip.AddrFromSlice(s.LocalAddr)
			remote, _ := netip.AddrFromSlice(s.RemoteAddr)
			if e := ends[netip.AddrPortFrom(local, uint16(s.LocalPort))]; e != nil && netip.AddrPortFrom(remote, uint16(s.RemotePort)) == otherEnd(client, server, local, s.LocalPort) {
				if s.Cookie == 0 {
					t.Errorf("socket %v announced without a cookie", s)
				}
				e.role = s.Role
				e.newConn = e.newConn || s.NewConnection
				byHandle[s.Handle] = e
				owner[s.Handle] = s.Process
			}
		}
		for _, o := range b.Owners {
			owner[o.Socket] = o.Process
		}
		var h uint32
		for i, gap := range b.Stats.HandleGaps {
			h += gap
			if e := byHandle[h]; e != nil {
				e.sent += b.Stats.BytesSent[i]
				e.received += b.Stats.BytesReceived[i]
			}
		}
		for _, h := range b.ClosedSockets {
			if e := byHandle[h]; e != nil {
				if p := procs[owner[h]]; p != nil {
					e.pid, e.comm, e.proc = p.Pid, p.Comm, p
				}
				e.closed = true
				delete(byHandle, h)
			}
		}
	}
	return ends[client], ends[server]
}

func otherEnd(client, server netip.AddrPort, local netip.Addr, port uint32) netip.AddrPort {
	if netip.AddrPortFrom(local, uint16(port)) == client {
		return server
	}
	return client
}

// transfer sends up bytes from a client to a server on loopback and down
// bytes back, closes both ends, and returns their addresses.
func transfer(t *testing.T, up, down int) (client, server netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close()
		if _, err := io.CopyN(io.Discard, conn, int64(up)); err != nil {
			errc <- err
			return
		}
		_, err = conn.Write(make([]byte, down))
		errc <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, conn, int64(down)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	client = conn.LocalAddr().(*net.TCPAddr).AddrPort()
	server = conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	conn.Close()
	return netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
}

// recorder is a test reducer that records hellos and batches and acks them.
type recorder struct {
	ingestv1.UnimplementedIngestServiceServer
	hellos  chan *ingestv1.Hello
	batches chan *ingestv1.Batch
}

func (r *recorder) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if h := req.GetHello(); h != nil {
			r.hellos <- h
		}
		if b := req.GetBatch(); b != nil {
			r.batches <- b
			if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: &ingestv1.Ack{Sequence: b.Sequence}}}); err != nil {
				return err
			}
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestPrivilegedDeprecatedFlag: --socket-map-entries still works, as
// --max-sockets, with a warning.
func TestPrivilegedDeprecatedFlag(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // start, then stop at once
	var stderr syncBuffer
	code := run(ctx, []string{"--socket-map-entries", "100", "--reducer", "127.0.0.1:1", "--http-addr", "127.0.0.1:0"}, io.Discard, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr.String())
	}
	for _, want := range []string{`msg="deprecated flag" flag=--socket-map-entries use=--max-sockets`, "max_sockets=100"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestPrivilegedBPFStats: with --bpf-stats, /metrics shows the run counts
// and run times of the probe's programs.
func TestPrivilegedBPFStats(t *testing.T) {
	requireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	startCollector(t, "--bpf-stats", "--http-addr", addr)
	transfer(t, 10000, 10000)
	deadline := time.Now().Add(10 * time.Second)
	for {
		runs, seconds := scrapeSum(t, "http://"+addr+"/metrics", "weir_collector_bpf_runs_total"), scrapeSum(t, "http://"+addr+"/metrics", "weir_collector_bpf_run_seconds_total")
		if runs > 0 && seconds > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("weir_collector_bpf_runs_total %v, weir_collector_bpf_run_seconds_total %v: want both > 0", runs, seconds)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrapeSum adds up the samples of one metric family on a /metrics page.
func scrapeSum(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for line := range strings.SplitSeq(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		sum += v
	}
	return sum
}
