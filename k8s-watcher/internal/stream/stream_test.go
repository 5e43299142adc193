package stream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/weir-project/weir/k8s-watcher/internal/view"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeReducer keeps what a reducer would: the objects, and the epoch and
// version it applied; gate, while held, stops it reading.
type fakeReducer struct {
	metadatav1.UnimplementedMetadataServiceServer
	mu        sync.Mutex
	epoch     uint64
	version   uint64
	objects   map[string]string // pod uid → name
	snapshots int
	deltas    int
	resync    chan string
	gate      sync.Mutex
}

func (f *fakeReducer) Stream(ss grpc.BidiStreamingServer[metadatav1.StreamRequest, metadatav1.StreamResponse]) error {
	first, err := ss.Recv()
	if err != nil {
		return err
	}
	f.mu.Lock()
	wel := &metadatav1.Welcome{Epoch: f.epoch, Version: f.version}
	f.mu.Unlock()
	if err := ss.Send(&metadatav1.StreamResponse{Kind: &metadatav1.StreamResponse_Welcome{Welcome: wel}}); err != nil {
		return err
	}
	epoch := first.GetHello().GetEpoch()
	go func() {
		for {
			select {
			case <-ss.Context().Done():
				return
			case r := <-f.resync:
				_ = ss.Send(&metadatav1.StreamResponse{Kind: &metadatav1.StreamResponse_Resync{Resync: &metadatav1.Resync{Reason: r}}})
			}
		}
	}()
	var snap map[string]string
	for {
		f.gate.Lock()
		f.gate.Unlock() //nolint:staticcheck // a gate: wait while the test holds it
		r, err := ss.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		switch k := r.GetKind().(type) {
		case *metadatav1.StreamRequest_SnapshotStart:
			snap = map[string]string{}
			f.epoch = 0
		case *metadatav1.StreamRequest_Deltas:
			for _, d := range k.Deltas.GetDeltas() {
				f.deltas++
				m := f.objects
				if snap != nil {
					m = snap
				}
				if p := d.GetPod(); p != nil {
					m[p.GetUid()] = p.GetName()
				} else if del := d.GetDeleted(); del != nil {
					delete(m, del.GetId())
				}
			}
			if snap == nil {
				f.version = k.Deltas.GetVersion()
			}
		case *metadatav1.StreamRequest_SnapshotEnd:
			f.objects, snap = snap, nil
			f.epoch, f.version = epoch, k.SnapshotEnd.GetVersion()
			f.snapshots++
		}
		f.mu.Unlock()
	}
}

func (f *fakeReducer) state() (map[string]string, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.objects))
	for k, v := range f.objects {
		out[k] = v
	}
	return out, f.snapshots, f.deltas
}

func (f *fakeReducer) waitFor(t *testing.T, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _, _ := f.state()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reducer has %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serve(t *testing.T, f *fakeReducer) (string, func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	metadatav1.RegisterMetadataServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	return lis.Addr().String(), srv.Stop
}

func setPod(v *view.View, uid, name string) {
	v.Set(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: uid},
		&metadatav1.Delta{Object: &metadatav1.Delta_Pod{Pod: &metadatav1.Pod{Uid: uid, Name: name}}})
}

func TestSenderSnapshotResumeResyncAndSlowReducer(t *testing.T) {
	f := &fakeReducer{objects: map[string]string{"stale": "old"}, resync: make(chan string, 1)}
	addr, stop := serve(t, f)
	v := view.New(42, 100)
	setPod(v, "a", "a1")
	setPod(v, "b", "b1")
	s, err := New(Config{Addr: addr, Cluster: "c", Watcher: "w", Chunk: 1, MaxBackoff: 50 * time.Millisecond}, v, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()

	// A reducer with another epoch's state gets a snapshot, which replaces
	// it, then deltas.
	f.waitFor(t, map[string]string{"a": "a1", "b": "b1"})
	setPod(v, "a", "a2")
	v.Delete(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: "b"}, 1)
	f.waitFor(t, map[string]string{"a": "a2"})

	// The reducer restarts on the same address with its state: the sender
	// resumes without a snapshot, with the changes it missed.
	stop()
	setPod(v, "c", "c1")
	addr2, stop2 := serveAt(t, f, addr)
	_ = addr2
	f.waitFor(t, map[string]string{"a": "a2", "c": "c1"})
	if _, snaps, _ := f.state(); snaps != 1 {
		t.Fatalf("%d snapshots after a resume, want 1", snaps)
	}

	// The reducer asks for a snapshot.
	f.resync <- "test"
	deadline := time.Now().Add(5 * time.Second)
	for _, snaps, _ := f.state(); snaps != 2; _, snaps, _ = f.state() {
		if time.Now().After(deadline) {
			t.Fatal("no snapshot after a resync request")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A reducer that stops reading: 100,000 changes of 10 pods cost the
	// watcher 10 entries, and the reducer later gets only the last states.
	_, _, before := f.state()
	f.gate.Lock()
	for i := range 100_000 {
		setPod(v, fmt.Sprint(i%10), fmt.Sprintf("p%d", i))
	}
	if st := v.Stats(); st.Objects[metadatav1.ObjectKind_OBJECT_KIND_POD] != 12 || st.Coalesced < 90_000 {
		t.Fatalf("view while the reducer stalls: %+v", st)
	}
	f.gate.Unlock()
	want := map[string]string{"a": "a2", "c": "c1"}
	for i := range 10 {
		want[fmt.Sprint(i)] = fmt.Sprintf("p%d", 99_990+i)
	}
	f.waitFor(t, want)
	if _, _, after := f.state(); after-before > 10_000 {
		t.Fatalf("the stalled reducer got %d deltas for 100,000 changes of 10 pods", after-before)
	}
	cancel()
	<-done
	stop2()
}

// serveAt serves f on addr again.
func serveAt(t *testing.T, f *fakeReducer, addr string) (string, func()) {
	var lis net.Listener
	var err error
	for range 50 {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	metadatav1.RegisterMetadataServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	return addr, srv.Stop
}
