package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/match"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testMaxMessage = 64 << 10

type testServer struct {
	srv    *Server
	grpc   *grpcserver.Server
	engine *match.Engine
	reg    *prometheus.Registry
	conn   *grpc.ClientConn
}

// serve starts the ingest service on a gRPC server of its own, wired as
// main wires it.
func serve(t *testing.T, tlsConfig *tls.Config) *testServer {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewPedanticRegistry()
	engine, err := match.New(match.Config{SeriesTTL: time.Minute, SessionTTL: time.Minute, Loopback: true}, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(engine, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0", MaxMessageBytes: testMaxMessage, TLS: tlsConfig}, logger, srv.StatsHandler())
	srv.Register(gs)
	if err := gs.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, p := range []interface{ Shutdown(context.Context) error }{srv, gs, srv, gs} {
			if err := p.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		}
	})
	return &testServer{srv: srv, grpc: gs, engine: engine, reg: reg}
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	ts := serve(t, nil)
	conn, err := grpc.NewClient("passthrough:///"+ts.grpc.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ts.conn = conn
	return ts
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

// welcomed sends a hello and checks the welcome that answers it.
func welcomed(t *testing.T, s stream, node string, epoch uint64) {
	t.Helper()
	if err := s.Send(hello(node, epoch)); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("hello of %s: %v", node, err)
	}
	if w := resp.GetWelcome(); w.GetProtocolVersion() != ProtocolVersion {
		t.Fatalf("first response %v, want a welcome", resp)
	}
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
	welcomed(t, good.s, "healthy", 5)
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
			msg:    "unsupported protocol versions [2, 2] (this reducer speaks 1)",
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
			// grpc may end a stream (e.g. for an oversized message) before
			// the handler, which counts the rejection, sees the error.
			deadline := time.Now().Add(2 * time.Second)
			got := testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues(tc.reason)) - before
			for got == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
				got = testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues(tc.reason)) - before
			}
			if got != 1 {
				t.Errorf("streams_rejected_total{reason=%q} grew by %v, want 1", tc.reason, got)
			}
			// The other collector is unaffected.
			good.send(t)
		})
	}

	// A rejected stream may see its status before its handler has
	// returned and counted it out (grpc writes the status itself when a
	// receive fails, e.g. for an oversized message): wait for the gauge.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := testutil.ToFloat64(ts.srv.metrics.connected)
		if got == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("collectors connected %v, want 1", got)
			break
		}
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
	welcomed(t, old, "node-a", 1)
	h := &healthy{s: old}
	h.send(t)

	newer := &healthy{s: ts.open(t)}
	welcomed(t, newer.s, "node-a", 2)
	newer.send(t)
	if _, err := old.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("replaced stream ended with %v, want Aborted", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ts.grpc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := newer.s.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream at shutdown ended with %v, want Unavailable", err)
	}
	if ts.grpc.Ready() {
		t.Error("ready after shutdown")
	}
}

func TestVersionNegotiation(t *testing.T) {
	ts := startServer(t)
	tests := []struct {
		name     string
		min, max uint32
		caps     []string
		ok       bool
		wantCaps []string
	}{
		{name: "exactly 1", max: 1, ok: true},
		{name: "range 1 to 3 gets 1", min: 1, max: 3, ok: true},
		{name: "range 2 to 3 refused", min: 2, max: 3},
		{name: "only 2 refused", max: 2},
		{name: "empty range refused", min: 1, max: 0},
		{name: "capabilities intersect, unknown ones ignored", max: 1, ok: true,
			caps: []string{"future_thing", "socket_cookie", "socket_cookie"}, wantCaps: []string{"socket_cookie"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues("unsupported_version"))
			s := ts.open(t)
			err := s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
				NodeName: "n-negotiate", BootId: "boot", Epoch: uint64(i + 1),
				MinProtocolVersion: tc.min, ProtocolVersion: tc.max, Capabilities: tc.caps,
			}}})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := s.Recv()
			rejected := testutil.ToFloat64(ts.srv.metrics.rejected.WithLabelValues("unsupported_version")) - before
			if !tc.ok {
				if status.Code(err) != codes.FailedPrecondition || rejected != 1 {
					t.Errorf("got %v (rejections +%v), want FAILED_PRECONDITION counted as unsupported_version", err, rejected)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := resp.GetWelcome()
			if w == nil || w.GetProtocolVersion() != 1 || !slices.Equal(w.GetCapabilities(), tc.wantCaps) {
				t.Errorf("welcome %v, want version 1 with %v", resp, tc.wantCaps)
			}
			// The session works: a batch gets its ack.
			if err := s.Send(batch(&ingestv1.Batch{Sequence: 1})); err != nil {
				t.Fatal(err)
			}
			if resp, err := s.Recv(); err != nil || resp.GetAck().GetSequence() != 1 {
				t.Errorf("after the welcome: %v %v, want ack 1", resp, err)
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); !errors.Is(err, io.EOF) {
				t.Errorf("end: %v", err)
			}
		})
	}
}

func TestCollectorLoss(t *testing.T) {
	ts := startServer(t)
	s := ts.open(t)
	welcomed(t, s, "n-loss", 1)
	for i, l := range []*ingestv1.Loss{
		{RingFull: 1, SocketCap: 4, CounterRegressions: 2},
		{RingFull: 1, SocketCap: 10, CounterRegressions: 5, MapFull: 1},
	} {
		if err := s.Send(batch(&ingestv1.Batch{Sequence: uint64(i + 1), Loss: l})); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	for reason, want := range map[string]float64{"ring_full": 1, "map_full": 1, "buffer_dropped": 0, "socket_cap": 10, "counter_regressions": 5} {
		if got := testutil.ToFloat64(ts.srv.metrics.loss.WithLabelValues("n-loss", reason)); got != want {
			t.Errorf("collector_loss_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestAcksUncompressed: a collector that compresses its batches gets the
// welcome and the acks uncompressed.
func TestAcksUncompressed(t *testing.T) {
	ts := serve(t, nil)
	var compressed atomic.Int64
	conn, err := grpc.NewClient("passthrough:///"+ts.grpc.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(inPayloads{&compressed}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := ingestv1.NewIngestServiceClient(conn).Stream(t.Context(), grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatal(err)
	}
	welcomed(t, s, "node-a", 1)
	if err := s.Send(batch(&ingestv1.Batch{Sequence: 1})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := compressed.Load(); n != 0 {
		t.Errorf("%d responses arrived compressed", n)
	}
}

// inPayloads counts the received messages that were compressed.
type inPayloads struct{ compressed *atomic.Int64 }

func (h inPayloads) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (h inPayloads) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (h inPayloads) HandleConn(context.Context, stats.ConnStats)                       {}
func (h inPayloads) HandleRPC(_ context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.InPayload); ok && p.CompressedLength != p.Length {
		h.compressed.Add(1)
	}
}

// TestSparseAcks: a session with the sparse_acks capability is acked only
// where a batch asks, and once more for the last batch when the collector
// ends the stream; an ack covers the batches before it. Without the
// capability every batch is acked, whatever it asks.
func TestSparseAcks(t *testing.T) {
	ts := startServer(t)
	for _, tc := range []struct {
		name string
		caps []string
		want []uint64 // the acks, in order, for batches 1 to 5 that ask at 1 and 4
	}{
		{"sparse", []string{capSparseAcks}, []uint64{1, 4, 5}},
		{"without the capability", nil, []uint64{1, 2, 3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.open(t)
			h := hello("node-"+tc.name, 1)
			h.GetHello().Capabilities = tc.caps
			if err := s.Send(h); err != nil {
				t.Fatal(err)
			}
			resp, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetWelcome().GetCapabilities(); !slices.Equal(got, tc.caps) {
				t.Fatalf("welcome capabilities %q, want %q", got, tc.caps)
			}
			for seq := uint64(1); seq <= 5; seq++ {
				if err := s.Send(batch(&ingestv1.Batch{Sequence: seq, AckWanted: seq == 1 || seq == 4})); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for {
				resp, err := s.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, resp.GetAck().GetSequence())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("acks %v, want %v", got, tc.want)
			}
		})
	}
}
