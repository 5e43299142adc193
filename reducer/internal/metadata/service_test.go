package metadata

import (
	"context"
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

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

func startService(t *testing.T) (metadatav1.MetadataServiceClient, *Service) {
	t.Helper()
	tb := &table{m: map[resolve.Key]map[resolve.Rank]aggregate.Workload{}}
	reg := prometheus.NewRegistry()
	svc, err := New(NewCache(SinksOf(tb)), reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		_ = svc.Shutdown(context.Background())
		srv.Stop()
	})
	if problems, err := testutil.CollectAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	return metadatav1.NewMetadataServiceClient(conn), svc
}

func send(t *testing.T, st grpc.BidiStreamingClient[metadatav1.StreamRequest, metadatav1.StreamResponse], r *metadatav1.StreamRequest) {
	t.Helper()
	if err := st.Send(r); err != nil {
		t.Fatal(err)
	}
}

func hello(epoch uint64) *metadatav1.StreamRequest {
	return &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Hello{Hello: &metadatav1.Hello{Cluster: "c", Watcher: "w", Epoch: epoch}}}
}

func deltas(version uint64, ds ...*metadatav1.Delta) *metadatav1.StreamRequest {
	return &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Deltas{Deltas: &metadatav1.Deltas{Deltas: ds, Version: version}}}
}

func lookup(t *testing.T, c metadatav1.MetadataServiceClient, ip string) string {
	t.Helper()
	r, err := c.Lookup(context.Background(), &metadatav1.LookupRequest{Ip: ip})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetFound() {
		return "none"
	}
	return r.GetKind() + "/" + r.GetName()
}

func TestServiceSnapshotResumeAndSweep(t *testing.T) {
	c, _ := startService(t)
	ctx := context.Background()

	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, hello(7))
	resp, err := st.Recv()
	if err != nil || resp.GetWelcome() == nil || resp.GetWelcome().GetEpoch() != 0 {
		t.Fatalf("welcome %v %v, want an empty one", resp, err)
	}
	send(t, st, &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotStart{SnapshotStart: &metadatav1.SnapshotStart{Epoch: 7, Version: 2, Objects: 2}}})
	send(t, st, deltas(2, podD("a", "a-1", "ns", "", "deployment", "a", 1, "198.18.0.1"), podD("b", "b-1", "ns", "", "deployment", "b", 1, "198.18.0.2")))
	send(t, st, &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotEnd{SnapshotEnd: &metadatav1.SnapshotEnd{Version: 2}}})
	if resp, err := st.Recv(); err != nil || resp.GetAck().GetVersion() != 2 {
		t.Fatalf("ack %v %v", resp, err)
	}
	send(t, st, deltas(3, delD(metadatav1.ObjectKind_OBJECT_KIND_POD, "b")))
	if resp, err := st.Recv(); err != nil || resp.GetAck().GetVersion() != 3 {
		t.Fatalf("ack %v %v", resp, err)
	}
	if got := lookup(t, c, "198.18.0.1") + " " + lookup(t, c, "198.18.0.2"); got != "deployment/a none" {
		t.Fatalf("view %s", got)
	}
	_ = st.CloseSend()

	// The same watcher reconnects: the reducer says what it has.
	st, err = c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, hello(7))
	if resp, err := st.Recv(); err != nil || resp.GetWelcome().GetEpoch() != 7 || resp.GetWelcome().GetVersion() != 3 {
		t.Fatalf("welcome on reconnect %v %v, want epoch 7 version 3", resp, err)
	}
	// A new watcher (new epoch) sends a snapshot without pod a: a is swept.
	st2, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, st2, hello(9))
	if _, err := st2.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("the replaced stream ended with %v, want Aborted", err)
	}
	send(t, st2, &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotStart{SnapshotStart: &metadatav1.SnapshotStart{Epoch: 9, Version: 1}}})
	send(t, st2, deltas(1, podD("c", "c-1", "ns", "", "deployment", "c", 1, "198.18.0.3")))
	send(t, st2, &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotEnd{SnapshotEnd: &metadatav1.SnapshotEnd{Version: 1}}})
	if _, err := st2.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := lookup(t, c, "198.18.0.1") + " " + lookup(t, c, "198.18.0.3"); got != "none deployment/c" {
		t.Fatalf("view after the new snapshot %s", got)
	}
	_ = st2.CloseSend()
}

func TestServiceRejectsBadStreams(t *testing.T) {
	c, _ := startService(t)
	for _, tc := range []struct {
		name  string
		first *metadatav1.StreamRequest
		next  *metadatav1.StreamRequest
	}{
		{"no hello", deltas(1), nil},
		{"zero epoch", hello(0), nil},
		{"end without start", hello(1), &metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotEnd{SnapshotEnd: &metadatav1.SnapshotEnd{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := c.Stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			send(t, st, tc.first)
			if tc.next != nil {
				if _, err := st.Recv(); err != nil {
					t.Fatal(err)
				}
				send(t, st, tc.next)
			}
			if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
		})
	}
	if _, err := c.Lookup(context.Background(), &metadatav1.LookupRequest{Ip: "nope"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("lookup of a bad address: %v", err)
	}
}
