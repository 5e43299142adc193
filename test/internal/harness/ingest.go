package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // collectors send gzip-compressed streams

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// IngestStub stands in for the reducer: a gRPC server speaking
// weir.ingest.v1 that accepts every collector, acknowledges every batch and
// records, for each socket announced, the sum of the counter deltas reported
// for that end alone. Tests read one end's view of a connection from it,
// with no join of the two ends in between.
type IngestStub struct {
	Addr string

	mu       sync.Mutex
	sessions int
	batches  []time.Time // when each batch arrived
	polls    []time.Time // when the collector read the counters of each batch (Batch.time)
	sockets  []*StubSocket
}

// StubSocket is one socket end as the collector announced it, with the
// deltas reported for it added up.
type StubSocket struct {
	Session       int // 1 for the first stream, 2 after a reconnect, …
	Handle        uint32
	Cookie        uint64
	Role          ingestv1.Role
	Local, Remote netip.AddrPort
	NetNS         uint32 // inode number of the socket's network namespace
	NewConnection bool
	Comm          string // of the owning process, when announced

	BytesSent, BytesReceived, SegmentsSent, SegmentsReceived uint64
	Updates                                                  int // stats entries received
	Closed                                                   bool
}

// StartIngestStub serves on a free loopback port until the test ends.
func StartIngestStub(tb testing.TB) *IngestStub {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &IngestStub{Addr: ln.Addr().String()}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	ingestv1.RegisterIngestServiceServer(srv, stubService{s: s})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return s
}

type stubService struct {
	ingestv1.UnimplementedIngestServiceServer
	s *IngestStub
}

func (x stubService) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	req, err := st.Recv()
	if err != nil {
		return err
	}
	hello := req.GetHello()
	if hello == nil {
		return errors.New("stub: the first message is not a hello")
	}
	// Every capability is accepted but the compressors other than gzip,
	// which the stub does not have: the collector then stays on gzip.
	var caps []string
	for _, c := range hello.GetCapabilities() {
		if !strings.HasPrefix(c, "compression_") {
			caps = append(caps, c)
		}
	}
	if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Welcome{Welcome: &ingestv1.Welcome{
		ProtocolVersion: hello.GetProtocolVersion(), Capabilities: caps,
	}}}); err != nil {
		return err
	}
	s := x.s
	s.mu.Lock()
	s.sessions++
	session := s.sessions
	s.mu.Unlock()
	comms := map[uint32]string{}
	live := map[uint32]*StubSocket{}
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b := req.GetBatch()
		if b == nil {
			return errors.New("stub: a second hello on one stream")
		}
		if err := s.apply(session, comms, live, b); err != nil {
			return err
		}
		if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: &ingestv1.Ack{Sequence: b.GetSequence()}}}); err != nil {
			return err
		}
	}
}

func (s *IngestStub) apply(session int, comms map[uint32]string, live map[uint32]*StubSocket, b *ingestv1.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, time.Now())
	s.polls = append(s.polls, b.GetTime().AsTime())
	for _, p := range b.GetProcesses() {
		comms[p.GetHandle()] = p.GetComm()
	}
	for _, so := range b.GetSockets() {
		x := &StubSocket{
			Session: session, Handle: so.GetHandle(), Cookie: so.GetCookie(), Role: so.GetRole(),
			Local:  addrPort(so.GetLocalAddr(), so.GetLocalPort()),
			Remote: addrPort(so.GetRemoteAddr(), so.GetRemotePort()),
			NetNS:  so.GetNetns(), NewConnection: so.GetNewConnection(), Comm: comms[so.GetProcess()],
		}
		if old := live[x.Handle]; old != nil {
			old.Closed = true // a handle announced again replaces its socket
		}
		live[x.Handle] = x
		s.sockets = append(s.sockets, x)
	}
	for _, o := range b.GetOwners() {
		if x := live[o.GetSocket()]; x != nil {
			x.Comm = comms[o.GetProcess()]
		}
	}
	st := b.GetStats()
	n := len(st.GetHandleGaps())
	if len(st.GetBytesSent()) != n || len(st.GetBytesReceived()) != n || len(st.GetSegmentsSent()) != n || len(st.GetSegmentsReceived()) != n {
		return fmt.Errorf("stub: batch %d: stats columns of unequal length", b.GetSequence())
	}
	var h uint32
	for i, gap := range st.GetHandleGaps() {
		h += gap
		x := live[h]
		if x == nil {
			return fmt.Errorf("stub: batch %d: stats for unknown socket handle %d", b.GetSequence(), h)
		}
		x.BytesSent += st.GetBytesSent()[i]
		x.BytesReceived += st.GetBytesReceived()[i]
		x.SegmentsSent += st.GetSegmentsSent()[i]
		x.SegmentsReceived += st.GetSegmentsReceived()[i]
		x.Updates++
	}
	for _, h := range b.GetClosedSockets() {
		if x := live[h]; x != nil {
			x.Closed = true
			delete(live, h)
		}
	}
	return nil
}

func addrPort(b []byte, port uint32) netip.AddrPort {
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// Sockets returns a copy of every socket announced so far that matches
// keep.
func (s *IngestStub) Sockets(keep func(StubSocket) bool) []StubSocket {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []StubSocket
	for _, x := range s.sockets {
		if keep(*x) {
			out = append(out, *x)
		}
	}
	return out
}

// Batches is the number of batches received so far, and when the last one
// arrived.
func (s *IngestStub) Batches() (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batches) == 0 {
		return 0, time.Time{}
	}
	return len(s.batches), s.batches[len(s.batches)-1]
}

// WaitPollAfter waits for a batch whose counters the collector read
// (Batch.time) after t, and returns when they were read and when the batch
// arrived.
func (s *IngestStub) WaitPollAfter(tb testing.TB, t time.Time, timeout time.Duration) (polled, arrived time.Time) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for i, at := range s.polls {
			if at.After(t) {
				polled, arrived = at, s.batches[i]
				s.mu.Unlock()
				return polled, arrived
			}
		}
		s.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("no batch read after %s within %s", t.Format(time.StampMicro), timeout)
	return time.Time{}, time.Time{}
}

// WaitBatchAfter waits for a batch that arrives after t, and returns when it
// arrived.
func (s *IngestStub) WaitBatchAfter(tb testing.TB, t time.Time, timeout time.Duration) time.Time {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for _, at := range s.batches {
			if at.After(t) {
				s.mu.Unlock()
				return at
			}
		}
		s.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("no batch from the collector within %s", timeout)
	return time.Time{}
}
