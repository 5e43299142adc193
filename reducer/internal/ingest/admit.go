package ingest

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/authn"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/match"
)

// Admission bounds who may open a session, with what epoch, and what a
// session may hold.
//
// Sessions and epochs: a collector's epoch is its clock in nanoseconds
// since the Unix epoch when it connects (weir-collector takes
// max(now, previous+1)), so a restarted or reconnecting collector always
// comes with a greater epoch. The reducer refuses an epoch more than
// MaxEpochSkew ahead of its own clock (epoch_in_future,
// FAILED_PRECONDITION): without that bound a client could send 2^64-1 and
// lock the node out for good. Two live streams for one node resolve the
// same way every time: the hello with the greater epoch (or another boot
// id) wins, the older stream ends with ABORTED and is counted in
// weir_reducer_sessions_replaced_total; an equal or lower epoch of the
// same boot is refused (stale_epoch). Under mTLS a hello is checked against
// the certificate first (node_mismatch, PERMISSION_DENIED), so only the
// node's own certificate can replace its session, and for at most
// MaxEpochSkew ahead of time.
type Admission struct {
	// HelloTimeout is how long a stream may wait before its hello; 0 for
	// no limit. Past it the stream ends with DEADLINE_EXCEEDED.
	HelloTimeout time.Duration
	// MaxEpochSkew is how far ahead of the reducer's clock an epoch (as
	// nanoseconds since the Unix epoch) may be; 0 for no bound.
	MaxEpochSkew time.Duration
	// MaxSessionSockets and MaxSessionProcesses are the most live socket
	// and process handles of one session; 0 for no limit. A batch that
	// would go beyond ends the stream with RESOURCE_EXHAUSTED before it is
	// decoded or applied.
	MaxSessionSockets   int
	MaxSessionProcesses int
}

// DefaultAdmission returns the bounds of a reducer started without flags:
// four times the collector's default socket cap per session.
func DefaultAdmission() Admission {
	return Admission{
		HelloTimeout:        10 * time.Second,
		MaxEpochSkew:        5 * time.Minute,
		MaxSessionSockets:   262144,
		MaxSessionProcesses: 262144,
	}
}

// SetAdmission sets the bounds of new streams; call it before serving.
func (s *Server) SetAdmission(a Admission) { s.adm = a }

// Reasons for refusing a stream at admission.
const (
	reasonHelloTimeout   reason = "hello_timeout"
	reasonNodeMismatch   reason = "node_mismatch"
	reasonEpochInFuture  reason = "epoch_in_future"
	reasonSessionSockets reason = "session_sockets_cap"
	reasonSessionProcs   reason = "session_processes_cap"
)

// recvHello receives a stream's first message within the hello timeout.
// The error is the stream's status, already counted.
func (s *Server) recvHello(stream grpc.ServerStream, f *grpcserver.Frame) (*ingestv1.StreamRequest, error) {
	if s.adm.HelloTimeout <= 0 {
		m, err := recvRequest(stream, f)
		if err != nil {
			return nil, s.recvError(s.logger, err)
		}
		return m, nil
	}
	type result struct {
		m   *ingestv1.StreamRequest
		err error
	}
	// Recv cannot be interrupted but by the stream's end, which comes
	// when this handler returns.
	done := make(chan result, 1)
	go func() {
		m, err := recvRequest(stream, f)
		done <- result{m, err}
	}()
	t := time.NewTimer(s.adm.HelloTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, s.recvError(s.logger, r.err)
		}
		return r.m, nil
	case <-t.C:
		return nil, s.reject(s.logger, reasonHelloTimeout,
			status.Errorf(codes.DeadlineExceeded, "no hello within %s", s.adm.HelloTimeout))
	}
}

// open checks a hello against the peer's identity and the epoch bound, and
// opens its session. The error is the stream's status, already counted.
func (s *Server) open(ctx context.Context, logger *slog.Logger, hello *ingestv1.Hello, cancel func()) (*match.Session, error) {
	if id, ok := authn.FromContext(ctx); ok && (id.Kind != authn.KindNode || id.Name != hello.GetNodeName()) {
		return nil, s.reject(logger, reasonNodeMismatch, status.Errorf(codes.PermissionDenied,
			"hello for node %q: the client certificate is %s's", hello.GetNodeName(), id))
	}
	if skew := s.adm.MaxEpochSkew; skew > 0 {
		limit := s.now().Add(skew).UnixNano()
		if limit > 0 && hello.GetEpoch() > uint64(limit) {
			return nil, s.reject(logger, reasonEpochInFuture, status.Errorf(codes.FailedPrecondition,
				"epoch %d is more than %s ahead of the reducer's clock (%d): epochs are the collector's clock in nanoseconds; check the node's clock",
				hello.GetEpoch(), skew, s.now().UnixNano()))
		}
	}
	sess, err := s.engine.Open(match.Hello{
		Node:   hello.GetNodeName(),
		BootID: hello.GetBootId(),
		Epoch:  hello.GetEpoch(),

		ReportInterval: hello.GetReportInterval().AsDuration(),
	}, cancel)
	if err != nil {
		return nil, s.rejectEngine(logger, err)
	}
	return sess, nil
}

// holdings are the live handles of a session, as its accepted batches
// announced and retired them.
type holdings struct {
	sockets, procs int
}

// admit checks that batch keeps the session within its caps. It looks at
// the wire batch only, so that an oversized announcement is refused before
// anything is decoded or applied. The error is the stream's status, already
// counted.
func (s *Server) admit(logger *slog.Logger, h *holdings, seq uint64, sockets, procs int) error {
	if n := sockets; s.adm.MaxSessionSockets > 0 && h.sockets+n > s.adm.MaxSessionSockets {
		return s.reject(logger, reasonSessionSockets, status.Errorf(codes.ResourceExhausted,
			"batch %d: %d live sockets and %d new ones are more than this reducer's cap of %d per session",
			seq, h.sockets, n, s.adm.MaxSessionSockets))
	}
	if n := procs; s.adm.MaxSessionProcesses > 0 && h.procs+n > s.adm.MaxSessionProcesses {
		return s.reject(logger, reasonSessionProcs, status.Errorf(codes.ResourceExhausted,
			"batch %d: %d live processes and %d new ones are more than this reducer's cap of %d per session",
			seq, h.procs, n, s.adm.MaxSessionProcesses))
	}
	return nil
}

// applied counts what an applied batch announced and retired.
func (h *holdings) applied(sockets, closed, procs, forgotten int) {
	h.sockets += sockets - closed
	h.procs += procs - forgotten
}
