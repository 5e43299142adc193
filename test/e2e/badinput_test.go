package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/test/internal/harness"
)

// rawCodec sends bytes as they are, so a test can put anything on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T is not []byte", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// loopbackTransfer runs flowsrv and flowcli on 127.0.0.1 and waits for both.
func loopbackTransfer(t *testing.T, conns, request, response int) {
	t.Helper()
	port := harness.FreePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	srv := harness.Start(t, "flowsrv", peerBin(t, "flowsrv"), "-listen", addr, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "flowcli", peerBin(t, "flowcli"), "-connect", addr, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
	if err := cli.Wait(60 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
	if err := srv.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowsrv: %v\n%s", err, srv.Stderr())
	}
}

// TestPrivilegedReducerRejectsBadInput sends garbage, oversized and invalid
// messages to the reducer's gRPC port while a real collector streams to it.
// Each bad stream gets a clear status and a counter; the reducer stays up and
// the collector's flows still reach /metrics, byte-exact.
func TestPrivilegedReducerRejectsBadInput(t *testing.T) {
	harness.RequireRoot(t)
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second})

	t.Run("raw bytes that are not HTTP/2", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", w.GRPCAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("GARBAGE\x00\xff\x13 this is not a gRPC client\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// The server closes the connection, with a FIN or a reset.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the reducer did not close the connection: %v", err)
		}
	})

	conn, err := grpc.NewClient(w.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := ingestv1.NewIngestServiceClient(conn)
	hello := func(node string, version uint32) *ingestv1.StreamRequest {
		return &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
			ProtocolVersion: version, NodeName: node, Epoch: uint64(time.Now().UnixNano()),
			ReportInterval: durationpb.New(time.Second),
		}}}
	}

	cases := []struct {
		name string
		send func(ctx context.Context) error // returns the stream's final error
		code codes.Code
	}{
		{
			name: "payload that is not a protobuf message",
			send: func(ctx context.Context) error {
				desc := &grpc.StreamDesc{StreamName: "Stream", ClientStreams: true, ServerStreams: true}
				s, err := conn.NewStream(ctx, desc, ingestv1.IngestService_Stream_FullMethodName, grpc.ForceCodec(rawCodec{}))
				if err != nil {
					return err
				}
				_ = s.SendMsg([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02})
				var resp []byte
				return s.RecvMsg(&resp)
			},
			code: codes.InvalidArgument,
		},
		{
			name: "oversized hello",
			send: func(ctx context.Context) error {
				s, err := client.Stream(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(hello(strings.Repeat("n", 8<<20), 1))
				_, err = s.Recv()
				return err
			},
			code: codes.ResourceExhausted,
		},
		{
			name: "unsupported protocol version",
			send: func(ctx context.Context) error {
				s, err := client.Stream(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(hello("bad-version", 99))
				_, err = s.Recv()
				return err
			},
			code: codes.FailedPrecondition,
		},
		{
			name: "batch before hello",
			send: func(ctx context.Context) error {
				s, err := client.Stream(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{Sequence: 1}}})
				_, err = s.Recv()
				return err
			},
			code: codes.InvalidArgument,
		},
		{
			name: "unknown socket handle",
			send: func(ctx context.Context) error {
				s, err := client.Stream(ctx)
				if err != nil {
					return err
				}
				_ = s.Send(hello("bad-handle", 1))
				_ = s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{
					Sequence: 1,
					Stats: &ingestv1.SocketStats{HandleGaps: []uint32{42}, BytesSent: []uint64{1},
						BytesReceived: []uint64{1}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{1}},
				}}})
				// The hello is valid: the reducer may answer it (a welcome)
				// before it refuses the batch.
				for {
					if _, err := s.Recv(); err != nil {
						return err
					}
				}
			},
			code: codes.InvalidArgument,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := tc.send(ctx)
			st, _ := status.FromError(err)
			if st.Code() != tc.code {
				t.Fatalf("status = %v %q, want code %v", st.Code(), st.Message(), tc.code)
			}
			if st.Message() == "" {
				t.Fatalf("status %v has no message", st.Code())
			}
			t.Logf("%s → %v: %s", tc.name, st.Code(), st.Message())
		})
	}

	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("weir_reducer_streams_rejected_total", nil); got < float64(len(cases)) {
		t.Errorf("weir_reducer_streams_rejected_total = %v, want >= %d", got, len(cases))
	}
	if !w.Reducer.Alive() {
		t.Fatal("the reducer exited")
	}

	// The real collector is still served: a loopback transfer shows up exactly.
	const conns, request, response = 3, 70_001, 9_999
	loopbackTransfer(t, conns, request, response)
	harness.WaitFor(t, w.MetricsURL, 15*time.Second, "the loopback edge after the bad input", func(m harness.Metrics) bool {
		e := readEdge(m)
		return e.up == conns*request && e.down == conns*response && e.opened == conns && e.active == 0
	})
}

// TestPrivilegedCollectorWithoutReducer starts a collector with nothing
// listening at its reducer address and a small buffer cap. Three connections
// move known bytes and stay open; then many short connections overflow the
// buffer of closed sockets. The collector must retry with backoff (not in a
// tight loop), drop what exceeds the cap and count it, and stay up. Then a
// reducer appears on that address: the collector connects, resyncs, and the
// held connections show up with their bytes (live sockets are never dropped:
// their counters stay in the kernel). Which closed sockets survive the cap
// depends on other traffic on the machine, so only the held ones are exact.
func TestPrivilegedCollectorWithoutReducer(t *testing.T) {
	harness.RequireRoot(t)
	const bufferCap = 32 << 10
	const held, heldReq, heldResp = 3, 50_000, 5_000
	reducerPort, colPort := harness.FreePort(t), harness.FreePort(t)
	reducerAddr := fmt.Sprintf("127.0.0.1:%d", reducerPort)
	col := harness.StartCollector(t, reducerAddr, colPort, time.Second, "--buffer-bytes", strconv.Itoa(bufferCap))
	colURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort)

	began := time.Now()
	bin := harness.Binaries(t)
	heldAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t)))
	// The held connections run under names of their own, so that their
	// edge is exact although the short connections' closed sockets are
	// partly dropped.
	srvBin, cliBin := renamed(t, fmt.Sprintf("hsrv%d", os.Getpid()), fmt.Sprintf("hcli%d", os.Getpid()))
	heldUp := edgeLabels(filepath.Base(cliBin), filepath.Base(srvBin))
	heldDown := edgeLabels(filepath.Base(srvBin), filepath.Base(cliBin))
	srv := harness.Start(t, "server", srvBin, "-listen", heldAddr, "-conns", strconv.Itoa(held),
		"-request-bytes", strconv.Itoa(heldReq), "-response-bytes", strconv.Itoa(heldResp))
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "client", cliBin, "-connect", heldAddr, "-conns", strconv.Itoa(held), "-hold",
		"-request-bytes", strconv.Itoa(heldReq), "-response-bytes", strconv.Itoa(heldResp))
	cli.WaitLine(t, "done", 10*time.Second)
	loopbackTransfer(t, 1500, 100, 100)
	time.Sleep(3 * time.Second)

	m, err := harness.Scrape(colURL)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(began)
	attempts := m.Sum("weir_collector_stream_reconnects_total", nil)
	dropped := m.Sum("weir_collector_buffer_dropped_total", nil)
	buffered := m.Sum("weir_collector_buffer_bytes", nil)
	t.Logf("after %s without a reducer: %v connection attempts, %v closed sockets dropped, %v bytes buffered (cap %d)",
		elapsed.Round(time.Second), attempts, dropped, buffered, bufferCap)
	if attempts < 2 {
		t.Errorf("connection attempts = %v, want the collector to keep retrying", attempts)
	}
	// Exponential backoff from 0.5 s: far fewer attempts than seconds*10.
	if max := elapsed.Seconds() + 2; attempts > max {
		t.Errorf("connection attempts = %v in %s: retrying in a tight loop", attempts, elapsed)
	}
	if dropped == 0 {
		t.Errorf("3000 closed sockets fit in a %d-byte buffer without a drop: the cap is not applied", bufferCap)
	}
	if buffered > bufferCap {
		t.Errorf("buffered bytes %v exceed the cap %d", buffered, bufferCap)
	}
	if !col.Alive() {
		t.Fatal("the collector exited")
	}

	// The reducer comes up: the collector connects and the map fills in.
	httpPort := harness.FreePort(t)
	harness.Start(t, "weir-reducer", filepath.Join(bin, "weir-reducer"),
		"--grpc-addr", reducerAddr, "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort))
	reducerURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	harness.WaitFor(t, colURL, 60*time.Second, "the collector to connect", func(m harness.Metrics) bool {
		v, ok := m.Value("weir_collector_connected", nil)
		return ok && v == 1
	})
	heldEdge := func(m harness.Metrics) (up, down, opened, active float64) {
		up, _ = m.Value("weir_tcp_bytes_total", heldUp)
		down, _ = m.Value("weir_tcp_bytes_total", heldDown)
		opened, _ = m.Value("weir_tcp_connections_opened_total", heldUp)
		active, _ = m.Value("weir_tcp_active_connections", heldUp)
		return up, down, opened, active
	}
	harness.WaitFor(t, reducerURL, 15*time.Second, "the held connections on the reducer, exact", func(m harness.Metrics) bool {
		up, down, opened, active := heldEdge(m)
		return active == held && opened == held && up == held*heldReq && down == held*heldResp
	})
	cli.CloseStdin()
	if err := cli.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowcli: %v", err)
	}
	harness.WaitFor(t, reducerURL, 15*time.Second, "the held connections to close, their bytes still exact", func(m harness.Metrics) bool {
		up, down, opened, active := heldEdge(m)
		return active == 0 && opened == held && up == held*heldReq && down == held*heldResp
	})
}
