package grpcserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// holdService holds each stream until its client ends it.
var holdService = grpc.ServiceDesc{
	ServiceName: "weir.test.Hold",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Hold",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			if err := ss.SendMsg(wrapperspb.UInt32(0)); err != nil {
				return err
			}
			var f Frame
			for {
				if err := ss.RecvMsg(&f); err != nil {
					return nil
				}
			}
		},
	}},
}

func startLimited(t *testing.T, lim Limits) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	srv := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20, Limits: lim, Registerer: reg}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.RegisterService(&holdService, struct{}{})
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv, reg
}

func TestConnLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lim    Limits
		reason string
		open   int // connections accepted
	}{
		{"per peer", Limits{MaxConnsPerPeer: 3, LimitLoopback: true}, refusedMaxConnsPerPeer, 3},
		{"total", Limits{MaxConns: 2}, refusedMaxConns, 2},
		{"loopback exempt from per peer", Limits{MaxConnsPerPeer: 1}, "", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, reg := startLimited(t, tc.lim)
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			open := 0
			for range 5 {
				c, err := net.Dial("tcp", srv.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				// A refused connection is closed at once: its read ends.
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); err == io.EOF {
					continue
				}
				open++
			}
			if open != tc.open {
				t.Errorf("%d connections stayed open, want %d", open, tc.open)
			}
			if tc.reason != "" {
				if got := testutil.ToFloat64(srv.lim.refused.WithLabelValues(tc.reason)); got != float64(5-tc.open) {
					t.Errorf("refused %s = %v, want %d", tc.reason, got, 5-tc.open)
				}
			}
			if got := testutil.ToFloat64(srv.lim.open); got != float64(tc.open) {
				t.Errorf("open gauge %v, want %d", got, tc.open)
			}
			for _, c := range conns {
				c.Close()
			}
			conns = nil
			deadline := time.Now().Add(5 * time.Second)
			for testutil.ToFloat64(srv.lim.open) != 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := testutil.ToFloat64(srv.lim.open); got != 0 {
				t.Errorf("open gauge %v after every close", got)
			}
			if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
				t.Errorf("lint: %v %v", problems, err)
			}
		})
	}
}

func TestStreamLimit(t *testing.T) {
	srv, _ := startLimited(t, Limits{MaxStreamsPerPeer: 2, LimitLoopback: true})
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := func() (grpc.ClientStream, error) {
		s, err := conn.NewStream(t.Context(), &holdService.Streams[0], "/weir.test.Hold/Hold", grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return nil, err
		}
		var out []byte
		return s, s.RecvMsg(&out)
	}
	var held []grpc.ClientStream
	for range 2 {
		s, err := open()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	if _, err := open(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream: %v, want ResourceExhausted", err)
	}
	if got := testutil.ToFloat64(srv.lim.refused.WithLabelValues(refusedMaxStreamsPerPeer)); got != 1 {
		t.Errorf("refused streams %v", got)
	}
	// A stream that ends frees its place.
	if err := held[0].CloseSend(); err != nil {
		t.Fatal(err)
	}
	var out []byte
	_ = held[0].RecvMsg(&out)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := open()
		if err == nil {
			_ = s.CloseSend()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no place after a stream ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = held[1].CloseSend()
}
