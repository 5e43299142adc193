package ingest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/match"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testMaxMessage = 64 << 10

type testServer struct {
	srv    *Server
	engine *match.Engine
	reg    *prometheus.Registry
	conn   *grpc.ClientConn
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewPedanticRegistry()
	engine, err := match.New(match.Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Loopback: true}, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: testMaxMessage}, engine, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("second shutdown: %v", err)
		}
	})
	return &testServer{srv: srv, engine: engine, reg: reg, conn: conn}
}

type stream = grpc.BidiStreamingClient[ingestv1.StreamRequest, ingestv1.StreamResponse]

func (ts *testServer) open(t *testing.T, opts ...grpc.CallOption) stream {
	t.Helper()
	s, err := ingestv1.NewIngestServiceClient(ts.conn).Stream(t.Context(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hello(node string, epoch uint64) *ingestv1.StreamRequest {
	return &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
		ProtocolVersion: 1, NodeName: node, BootId: "boot", Epoch: epoch,
	}}}
}

func batch(b *ingestv1.Batch) *ingestv1.StreamRequest {
	return &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}}
}

// healthy is a collector that keeps working while others misbehave.
type healthy struct {
	s   stream
	seq uint64
}

func (h *healthy) send(t *testing.T) {
	t.Helper()
	h.seq++
	b := &ingestv1.Batch{Sequence: h.seq, Stats: encodeStats([]uint32{1}, []uint64{10}, []uint64{20}, []uint64{1}, []uint64{1})}
	if h.seq == 1 {
		b.Processes = []*ingestv1.Process{{Handle: 1, Comm: "curl"}}
		b.Sockets = []*ingestv1.Socket{{Handle: 1, Process: 1, Role: ingestv1.Role_ROLE_CLIENT,
			LocalAddr: []byte{10, 0, 0, 1}, LocalPort: 40000, RemoteAddr: []byte{10, 0, 0, 2}, RemotePort: 80, NewConnection: true}}
		b.Loss = &ingestv1.Loss{RingFull: 3}
	}
	if err := h.s.Send(batch(b)); err != nil {
		t.Fatalf("healthy send: %v", err)
	}
	resp, err := h.s.Recv()
	if err != nil {
		t.Fatalf("healthy stream: %v", err)
	}
	if got := resp.GetAck().GetSequence(); got != h.seq {
		t.Fatalf("ack %d, want %d", got, h.seq)
	}
}

// rawCodec sends bytes as they are, to put invalid protobuf on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

func TestBadInput(t *testing.T) {
	ts := startServer(t)
	good := &healthy{s: ts.open(t, grpc.UseCompressor(gzip.Name))}
	if err := good.s.Send(hello("healthy", 5)); err != nil {
		t.Fatal(err)
	}
	good.send(t)

	stats := func(gaps []uint32, cols ...[]uint64) *ingestv1.SocketStats {
		return &ingestv1.SocketStats{HandleGaps: gaps, BytesSent: cols[0], BytesReceived: cols[1], SegmentsSent: cols[2], SegmentsReceived: cols[3]}
	}
	one := []uint64{1}
	tests := []struct {
		name   string
		send   func(t *testing.T) error // returns the stream's final status
		code   codes.Code
		msg    string
		reason string
	}{
		{
			name:   "missing hello",
			send:   sendAll(ts, batch(&ingestv1.Batch{Sequence: 1})),
			code:   codes.InvalidArgument,
			msg:    "first message must be a hello",
			reason: "no_hello",
		},
		{
			name: "wrong version",
			send: sendAll(ts, &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
				ProtocolVersion: 2, NodeName: "n-version", Epoch: 1}}}),
			code:   codes.FailedPrecondition,
			msg:    "unsupported protocol version 2 (want 1)",
			reason: "unsupported_version",
		},
		{
			name:   "empty node name",
			send:   sendAll(ts, hello("", 1)),
			code:   codes.InvalidArgument,
			msg:    "hello: empty node_name",
			reason: "invalid_hello",
		},
		{
			name:   "stale epoch",
			send:   sendAll(ts, hello("healthy", 5)),
			code:   codes.FailedPrecondition,
			msg:    "stale epoch 5",
			reason: "stale_epoch",
		},
		{
			name:   "unknown handle",
			send:   sendAll(ts, hello("n-unknown", 1), batch(&ingestv1.Batch{Sequence: 1, Stats: stats([]uint32{42}, one, one, one, one)})),
			code:   codes.InvalidArgument,
			msg:    "batch 1: stats entry 0: unknown socket handle 42",
			reason: "unknown_handle",
		},
		{
			name:   "bad column lengths",
			send:   sendAll(ts, hello("n-columns", 1), batch(&ingestv1.Batch{Sequence: 1, Stats: stats([]uint32{1}, one, []uint64{1, 2}, one, one)})),
			code:   codes.InvalidArgument,
			msg:    "batch 1: stats: column bytes_received has 2 entries, handle_gaps has 1",
			reason: "invalid_batch",
		},
		{
			name:   "sequence gap",
			send:   sendAll(ts, hello("n-sequence", 1), batch(&ingestv1.Batch{Sequence: 2})),
			code:   codes.InvalidArgument,
			msg:    "batch 2: sequence must be 1",
			reason: "bad_sequence",
		},
		{
			name:   "second hello",
			send:   sendAll(ts, hello("n-hello", 1), hello("n-hello", 2)),
			code:   codes.InvalidArgument,
			msg:    "only the first message may be a hello",
			reason: "unexpected_hello",
		},
		{
			name: "oversized message",
			send: sendAll(ts, hello("n-big", 1), batch(&ingestv1.Batch{Sequence: 1,
				Processes: []*ingestv1.Process{{Handle: 1, Comm: strings.Repeat("x", testMaxMessage)}}})),
			code:   codes.ResourceExhausted,
			msg:    "larger than max",
			reason: "message_too_large",
		},
		{
			name: "garbage payload",
			send: func(t *testing.T) error {
				s, err := ts.conn.NewStream(t.Context(), &ingestv1.IngestService_ServiceDesc.Streams[0],
					ingestv1.IngestService_Stream_FullMethodName, grpc.ForceCodec(rawCodec{}))
				if err != nil {
					t.Fatal(err)
				}
				// Field 1 with wire type 7, which does not exist.
				if err := s.SendMsg([]byte{0x0f, 0xff, 0xff, 0x01}); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				var out []byte
				return s.RecvMsg(&out)
			},
			code:   codes.InvalidArgument,
			msg:    "malformed message",
			reason: "malformed_message",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues(tc.reason))
			err := tc.send(t)
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
			if got := testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues(tc.reason)) - before; got != 1 {
				t.Errorf("streams_rejected_total{reason=%q} grew by %v, want 1", tc.reason, got)
			}
			// The other collector is unaffected.
			good.send(t)
		})
	}

	if got := testutil.ToFloat64(ts.srv.metrics.connected); got != 1 {
		t.Errorf("collectors connected %v, want 1", got)
	}
	if got := testutil.ToFloat64(ts.srv.metrics.receivedBytes); got <= 0 {
		t.Errorf("received bytes %v, want > 0", got)
	}
	if got := testutil.ToFloat64(ts.srv.metrics.loss.WithLabelValues("healthy", "ring_full")); got != 3 {
		t.Errorf("collector loss ring_full %v, want 3", got)
	}
	wantBytes := float64(10 * good.seq)
	for _, s := range ts.engine.Snapshot(nil) {
		if s.Key.Src.Name == "curl" && s.Value(aggregate.TCPBytes) != uint64(wantBytes) {
			t.Errorf("curl sent %d bytes, want %v", s.Value(aggregate.TCPBytes), wantBytes)
		}
	}
	if err := good.s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := good.s.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("healthy stream ended with %v, want EOF", err)
	}
}

// sendAll opens a stream, sends msgs and returns the status it ends with.
func sendAll(ts *testServer, msgs ...*ingestv1.StreamRequest) func(t *testing.T) error {
	return func(t *testing.T) error {
		s := ts.open(t)
		for _, m := range msgs {
			if err := s.Send(m); err != nil {
				if errors.Is(err, io.EOF) {
					break // the server ended the stream; Recv has the status
				}
				t.Fatal(err)
			}
		}
		for {
			if _, err := s.Recv(); err != nil {
				return err
			}
		}
	}
}

func TestReplaceAndShutdown(t *testing.T) {
	ts := startServer(t)
	old := ts.open(t)
	if err := old.Send(hello("node-a", 1)); err != nil {
		t.Fatal(err)
	}
	h := &healthy{s: old}
	h.send(t)

	newer := &healthy{s: ts.open(t)}
	if err := newer.s.Send(hello("node-a", 2)); err != nil {
		t.Fatal(err)
	}
	newer.send(t)
	if _, err := old.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("replaced stream ended with %v, want Aborted", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := newer.s.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream at shutdown ended with %v, want Unavailable", err)
	}
	if ts.srv.Ready() {
		t.Error("ready after shutdown")
	}
}
