package ingest

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/match"
)

// serve serves one collector: a hello, then batches, each answered by an ack.
func (s *Server) serve(stream grpc.ServerStream) error {
	ctx := stream.Context()
	var f grpcserver.Frame
	first, err := s.recvHello(stream, &f)
	if err != nil {
		return err
	}
	s.metrics.messages.Inc()
	hello := first.GetHello()
	if hello == nil {
		return s.reject(s.logger, reasonNoHello, status.Error(codes.InvalidArgument, "first message must be a hello"))
	}
	logger := s.logger.With("node", hello.GetNodeName(), "epoch", hello.GetEpoch())
	version, ok := negotiate(hello)
	if !ok {
		return s.reject(logger, reasonBadVersion, status.Errorf(codes.FailedPrecondition,
			"unsupported protocol versions [%d, %d] (this reducer speaks %d)", minVersion(hello), hello.GetProtocolVersion(), ProtocolVersion))
	}
	if hello.GetNodeName() == "" {
		return s.reject(logger, reasonBadHello, status.Error(codes.InvalidArgument, "hello: empty node_name"))
	}

	// Acks and the welcome are a few bytes: compressing them with the
	// collector's compressor costs more CPU than it saves wire.
	if err := grpc.SetSendCompressor(ctx, encoding.Identity); err != nil {
		logger.Debug("acks keep the stream's compressor", "error", err)
	}
	replaced := make(chan struct{})
	var once sync.Once
	sess, err := s.open(ctx, logger, hello, func() { once.Do(func() { close(replaced) }) })
	if err != nil {
		return err
	}
	s.metrics.connected.Inc()
	defer s.metrics.connected.Dec()
	defer s.engine.Detach(sess)
	welcome := &ingestv1.Welcome{ProtocolVersion: version, Capabilities: shared(hello.GetCapabilities())}
	welcome.ResumeEpoch, welcome.ResumeSequence = sess.Resume()
	if err := stream.SendMsg(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Welcome{Welcome: welcome}}); err != nil {
		logger.Info("stream closed", "error", err)
		return err
	}
	logger.Info("stream opened", "collector_version", hello.GetCollectorVersion(), "kernel_release", hello.GetKernelRelease(),
		"protocol_version", version, "capabilities", welcome.GetCapabilities())

	// One goroutine receives, applies and acks; this one waits for the
	// stream's end, a newer epoch or the shutdown, which must end the
	// stream while Recv waits (Recv ends only with the stream, when this
	// handler returns). Only the worker's stack grows deep (decompress,
	// apply, encode), so a thousand waiting handlers keep small ones.
	g := new(gate)
	errc := make(chan error, 1)
	sparse := slices.Contains(welcome.GetCapabilities(), capSparseAcks)
	go func() { errc <- s.work(logger, stream, sess, hello, sparse, g) }()
	// The session is detached (deferred above) only after the message
	// being applied, if any.
	defer g.close()
	select {
	case <-replaced:
		s.metrics.replaced.Inc()
		logger.Info("stream replaced by a newer epoch")
		return status.Error(codes.Aborted, "session replaced by a newer epoch")
	case <-s.stopping:
		return status.Error(codes.Unavailable, "reducer shutting down")
	case err := <-errc:
		return err
	}
}

// gate lets a stream's handler leave only between two messages: the
// worker holds it open while it applies one, and once the handler closed
// it the worker applies none.
type gate struct {
	mu     sync.Mutex
	closed bool
}

// enter reports whether the gate is open, and if so holds it until leave.
func (g *gate) enter() bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	return true
}

func (g *gate) leave() { g.mu.Unlock() }

// close waits for the message being applied, if any, and closes the gate.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// capSparseAcks is the capability of a session whose batches are acked
// only where they ask for it (Batch.ack_wanted), and at the stream's end:
// an ack is one write system call per stream, most of the reducer's CPU
// per batch once batches are small.
const capSparseAcks = "sparse_acks"

// work receives, applies and acks a stream's batches until the stream
// ends, a batch is refused or the handler has left (g closed). With sparse
// acks it acks only the batches that ask, and, when the collector ends the
// stream, the last batch applied. The error is the stream's status,
// already counted.
func (s *Server) work(logger *slog.Logger, stream grpc.ServerStream, sess *match.Session, hello *ingestv1.Hello, sparse bool, g *gate) error {
	// A waiting stream holds no buffer: a request comes from the pool once
	// a message has arrived, and the message is copied into its buffer.
	var r *request
	f := grpcserver.Frame{Buffer: func(size int) []byte {
		r = getRequest(size)
		return r.data
	}}
	var last, acked uint64
	var held holdings
	ack := &ingestv1.Ack{}
	resp := &ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: ack}}
	// SendMsg encodes the ack before it returns: one message serves every
	// ack of the stream.
	sendAck := func() error {
		ack.Sequence, acked = last, last
		err := stream.SendMsg(resp)
		if err != nil {
			logger.Info("stream closed", "error", err)
		}
		return err
	}
	for {
		r, f.Data = nil, nil
		err := stream.RecvMsg(&f)
		if !g.enter() {
			if r != nil {
				putRequest(r)
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) && acked < last {
				// The collector ended the stream and waits for what it
				// sent to be acked.
				_ = sendAck()
			}
			g.leave()
			if r != nil {
				putRequest(r)
			}
			return s.recvError(logger, err)
		}
		if r == nil {
			r = getRequest(0) // an empty message
		}
		r.data = f.Data
		err = s.handle(logger, sess, hello, &held, &last, r)
		wanted := !sparse || r.wire.ackWanted
		putRequest(r)
		if err == nil && wanted {
			err = sendAck()
		}
		g.leave()
		if err != nil {
			return err
		}
	}
}

// handle reads, checks and applies one request after the hello. The error
// is the stream's status, already counted.
func (s *Server) handle(logger *slog.Logger, sess *match.Session, hello *ingestv1.Hello, held *holdings, last *uint64, r *request) error {
	s.metrics.messages.Inc()
	w := &r.wire
	if err := readRequest(w, r.data); err != nil {
		return s.reject(logger, reasonMalformed, status.Error(codes.InvalidArgument, (&malformedError{err: err}).Error()))
	}
	if !w.batch {
		return s.reject(logger, reasonUnexpectedHello, status.Error(codes.InvalidArgument, "only the first message may be a hello"))
	}
	if seq := w.seq; seq != *last+1 {
		return s.reject(logger, reasonBadSequence, status.Errorf(codes.InvalidArgument, "batch %d: sequence must be %d", seq, *last+1))
	}
	if err := s.admit(logger, held, w.seq, len(w.sockets), len(w.processes)); err != nil {
		return err
	}
	b := &r.batch
	if err := decodeWire(b, w); err != nil {
		return s.reject(logger, reasonInvalidBatch, status.Error(codes.InvalidArgument, err.Error()))
	}
	s.engine.NameDNS(b)
	if err := s.engine.Apply(sess, b); err != nil {
		return s.rejectEngine(logger, err)
	}
	held.applied(len(w.sockets), len(w.closed), len(w.processes), len(w.forgotten))
	s.engine.ApplyDNS(sess, b)
	s.recordLoss(hello.GetNodeName(), hello.GetBootId(), w.lossReport())
	*last = w.seq
	return nil
}

// bigBuffer (bytes) and bigBatch (entries) are the sizes beyond which a
// stream lets a buffer go after use instead of keeping it for the next
// message: the first batch of a stream announces every live socket of its
// node, the batches that follow are small, and a thousand streams would
// otherwise each keep a snapshot's buffers.
const (
	bigBuffer = 16 << 10
	bigBatch  = 256
)

// minVersion returns the lowest protocol version of the hello's range.
func minVersion(h *ingestv1.Hello) uint32 {
	if v := h.GetMinProtocolVersion(); v != 0 {
		return v
	}
	return h.GetProtocolVersion()
}

// negotiate picks the highest version in the hello's range that this
// server speaks.
func negotiate(h *ingestv1.Hello) (uint32, bool) {
	lo, hi := minVersion(h), h.GetProtocolVersion()
	if lo <= ProtocolVersion && ProtocolVersion <= hi {
		return ProtocolVersion, true
	}
	return 0, false
}

// shared returns the collector's capabilities that this server also has,
// in the collector's order, once each. Unknown ones are left out.
func shared(theirs []string) []string {
	var out []string
	for _, c := range theirs {
		if slices.Contains(capabilities, c) && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// recvError turns the error that ended Recv into the stream's status.
func (s *Server) recvError(logger *slog.Logger, err error) error {
	if errors.Is(err, io.EOF) {
		logger.Info("stream closed by collector")
		return nil
	}
	var me *malformedError
	if errors.As(err, &me) {
		return s.reject(logger, reasonMalformed, status.Error(codes.InvalidArgument, me.Error()))
	}
	switch status.Code(err) {
	case codes.ResourceExhausted:
		return s.reject(logger, reasonTooLarge, err)
	case codes.Internal:
		// grpc has already ended the stream, e.g. for a message that
		// does not decompress.
		return s.reject(logger, reasonMalformed, err)
	}
	logger.Info("stream ended", "error", err)
	return err
}

// rejectEngine rejects a stream for an error of the matching engine.
func (s *Server) rejectEngine(logger *slog.Logger, err error) error {
	var me *match.Error
	if !errors.As(err, &me) {
		return s.reject(logger, reasonInvalidBatch, status.Error(codes.Internal, err.Error()))
	}
	switch me.Reason {
	case match.ReasonSessionReplaced:
		s.metrics.replaced.Inc()
		logger.Info("stream replaced by a newer epoch")
		return status.Error(codes.Aborted, me.Msg)
	case match.ReasonStaleEpoch:
		return s.reject(logger, reason(me.Reason), status.Error(codes.FailedPrecondition, me.Msg))
	}
	return s.reject(logger, reason(me.Reason), status.Error(codes.InvalidArgument, me.Msg))
}

// reject counts and logs a rejected stream once and returns its status.
func (s *Server) reject(logger *slog.Logger, r reason, err error) error {
	s.metrics.rejected.WithLabelValues(string(r)).Inc()
	logger.Warn("stream rejected", "reason", string(r), "code", status.Code(err).String(), "error", status.Convert(err).Message())
	return err
}

// lossState is the last loss report of a node.
type lossState struct {
	bootID string
	counts [len(lossReasons)]uint64
}

// lossReasons label the collector's loss counters, in the order of
// lossState.counts.
var lossReasons = [...]string{"ring_full", "map_full", "buffer_dropped", "socket_cap", "counter_regressions",
	"failed_connects_dropped", "resets_unreported", "udp_peer_cap", "udp_flows_dropped",
	"conntrack_overrun", "dns_parse_errors", "dns_ring_full", "process_ring_full"}

// recordLoss adds what a collector's cumulative loss counters gained since
// its last report. Counters that went down belong to a restarted collector
// and count from zero.
func (s *Server) recordLoss(node, bootID string, l *ingestv1.Loss) {
	if l == nil {
		return
	}
	s.lossMu.Lock()
	defer s.lossMu.Unlock()
	prev, ok := s.loss[node]
	if !ok || prev.bootID != bootID {
		prev = lossState{bootID: bootID}
	}
	next := lossState{bootID: bootID, counts: [...]uint64{
		l.GetRingFull(), l.GetMapFull(), l.GetBufferDropped(), l.GetSocketCap(), l.GetCounterRegressions(),
		l.GetFailedConnectsDropped(), l.GetResetsUnreported(), l.GetUdpPeerCap(), l.GetUdpFlowsDropped(),
		l.GetConntrackOverrun(), l.GetDnsParseErrors(), l.GetDnsRingFull(), l.GetProcessRingFull(),
	}}
	for i, n := range next.counts {
		d := n
		if p := prev.counts[i]; n >= p {
			d = n - p
		}
		if d > 0 {
			s.metrics.loss.WithLabelValues(node, lossReasons[i]).Add(float64(d))
		}
	}
	s.loss[node] = next
}
