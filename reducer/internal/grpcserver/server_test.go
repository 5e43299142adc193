package grpcserver

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// rawCodec sends bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

// frameService answers each request with the length of its raw frame, as a
// protobuf message.
var frameService = grpc.ServiceDesc{
	ServiceName: "weir.test.Frames",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Echo",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			var f Frame
			for {
				if err := ss.RecvMsg(&f); err != nil {
					if err == io.EOF {
						return nil
					}
					return err
				}
				if err := ss.SendMsg(wrapperspb.UInt32(uint32(len(f.Data)))); err != nil {
					return err
				}
			}
		},
	}},
}

func TestServicesShareTheServer(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, logger)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	srv.RegisterService(&frameService, struct{}{})
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !srv.Ready() {
		t.Error("not ready after Start")
	}
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if srv.Ready() {
			t.Error("ready after Shutdown")
		}
	}()

	t.Run("unrelated service decodes protobuf normally", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %v", resp.GetStatus())
		}
		hs.SetServingStatus("weir", healthpb.HealthCheckResponse_NOT_SERVING)
		resp, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{Service: "weir"})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health of weir: %v %v (the request's field was not decoded)", resp.GetStatus(), err)
		}
	})
	t.Run("unrelated service refuses malformed protobuf as grpc does", func(t *testing.T) {
		var out []byte
		err := conn.Invoke(t.Context(), healthpb.Health_Check_FullMethodName, []byte{0x0f, 0xff, 0xff, 0x01}, &out, grpc.ForceCodec(rawCodec{}))
		if status.Code(err) != codes.Internal {
			t.Errorf("malformed request: %v, want Internal from the proto codec", err)
		}
	})
	t.Run("frame service gets raw bytes", func(t *testing.T) {
		s, err := conn.NewStream(t.Context(), &frameService.Streams[0], "/weir.test.Frames/Echo", grpc.ForceCodec(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		// Not protobuf at all: the handler still gets it.
		for _, msg := range [][]byte{{0x0f, 0xff, 0xff, 0x01}, make([]byte, 1000), {}} {
			if err := s.SendMsg(msg); err != nil {
				t.Fatal(err)
			}
			var out []byte
			if err := s.RecvMsg(&out); err != nil {
				t.Fatal(err)
			}
			var n wrapperspb.UInt32Value
			if err := proto.Unmarshal(out, &n); err != nil {
				t.Fatal(err)
			}
			if int(n.GetValue()) != len(msg) {
				t.Errorf("frame of %d bytes arrived as %d", len(msg), n.GetValue())
			}
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := s.RecvMsg(&out); err != io.EOF {
			t.Errorf("end of stream: %v", err)
		}
	})
}
