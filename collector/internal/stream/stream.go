// Package stream keeps the collector's gRPC session to the reducer: hello, periodic batches, acks and reconnects.
package stream

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/sockets"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// The ingest wire protocol versions the collector speaks: it offers the
// range in its Hello and the reducer picks one.
const (
	ProtocolVersion    = 1
	MinProtocolVersion = 1
)

// capabilities are the optional features the collector sends.
var capabilities = []string{"socket_cookie", capZstd, capSparseAcks}

// capZstd: the reducer decompresses zstd. A collector whose stream is
// gzip-compressed and whose welcome names it reconnects once with zstd,
// as soon as its first batch is acked (not at the next tick): zstd
// compresses batches about as well as gzip, costs the reducer a fifteenth
// of gzip's time, and costs the collector far less than gzip's default
// level under connection churn.
const capZstd = "compression_zstd"

// capSparseAcks: the reducer acks only the batches that ask for it
// (Batch.ack_wanted), and the last one it applied when the collector ends
// the stream. An ack costs the reducer a write system call per stream,
// which is most of its CPU per batch once batches are small; a reducer
// without the capability acks every batch, whatever the batch asks.
const capSparseAcks = "sparse_acks"

// DefaultAckEvery is how many reports go out per report that asks for an
// ack: one ack for two reports cut the reducer's CPU per empty batch by
// about a fifth (BenchmarkFleetFloor in test/fleet).
const DefaultAckEvery = 2

// errZstd ends a gzip session to reopen it with zstd.
var errZstd = errors.New("reducer takes zstd: reconnecting with it")

// errMoved ends a session whose reducer is no longer the one the node's
// rendezvous hash picks.
var errMoved = errors.New("the reducer set changed: moving")

// resolveEvery is how often a session re-resolves a reducer name with
// several addresses.
const resolveEvery = 30 * time.Second

// pick returns the address to dial. When the reducer address is a DNS name
// with several addresses (the pods of a headless Service), it is the one
// that the rendezvous hash of the node name picks, so that each node sends
// to one reducer and only the nodes of a reducer that comes or goes move;
// authority is then the name, for TLS. Otherwise it is the address as
// given, and grpc resolves it.
func (c *Client) pick(ctx context.Context) (target, authority string) {
	host, port, err := net.SplitHostPort(c.cfg.Addr)
	if err != nil {
		return c.cfg.Addr, ""
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return c.cfg.Addr, ""
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lookup := c.lookupHost
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	addrs, err := lookup(lctx, host)
	if err != nil || len(addrs) < 2 {
		return c.cfg.Addr, ""
	}
	targets := make([]string, len(addrs))
	for i, a := range addrs {
		targets[i] = net.JoinHostPort(a, port)
	}
	return Rendezvous(c.cfg.NodeName, targets), host
}

// Rendezvous returns the member of addrs with the highest FNV-1a hash of
// node, a zero byte and the member: each node's pick stays put when other
// members come or go.
func Rendezvous(node string, addrs []string) string {
	var best string
	var top uint64
	for _, a := range addrs {
		h := fnv.New64a()
		h.Write([]byte(node))
		h.Write([]byte{0})
		h.Write([]byte(a))
		if v := h.Sum64(); best == "" || v > top {
			best, top = a, v
		}
	}
	return best
}

// Defaults of the reconnect backoff. The backoff never exceeds the report
// interval either (with ±50% jitter), so that a collector is back within
// two intervals of the reducer's return, and a thousand collectors that
// lost it at once come back spread over one interval.
const (
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
)

// Table is the socket table, which a poll updates.
type Table interface {
	Poll(src sockets.Sampler) error
}

// resumer is a Table that keeps the changes of the reports the reducer
// has not confirmed, so that a new session can send them again
// (sockets/resume.go).
type resumer interface {
	Drains() uint64
	Confirm(gen uint64)
	Rollback() int
}

// inFlight is a report sent and not confirmed: its batches' sequences and
// the table's drain generation.
type inFlight struct {
	first, last uint64
	gen         uint64
}

// welcomeWait bounds the wait for the reducer's welcome before the first
// report of a session that has reports of the previous one to settle (at
// most the ack timeout); a reducer that sends none is served without
// resuming.
const welcomeWait = 5 * time.Second

// pressurer is a Table that asks for an early report when its buffer of
// closed sockets fills up.
type pressurer interface {
	Pressure() <-chan struct{}
}

// Reporter builds the batches: Report encodes what changed since the
// previous one, Resync starts a new epoch in which everything live is
// announced again.
type Reporter interface {
	Resync()
	Report(now time.Time) *ingestv1.Batch
}

// Source is the kernel side: the socket storage and the probe's loss counters.
type Source interface {
	sockets.Sampler
	Drops() (probe.Drops, error)
	// Sync returns once every lifecycle event submitted so far has been
	// applied to the table, so that a poll sees no socket before its open.
	Sync(ctx context.Context) error
}

// syncTimeout bounds the wait for the event reader before a poll.
const syncTimeout = time.Second

// Config is what a Client needs to reach the reducer and introduce itself.
type Config struct {
	Addr     string        // reducer host:port
	Interval time.Duration // report interval
	// TLS files; all empty for plaintext, all set for mTLS.
	TLSCert, TLSKey, TLSCA string
	// Reconnect backoff, with jitter.
	InitialBackoff, MaxBackoff time.Duration
	// MaxBatchBytes bounds one batch message; a larger report goes out as
	// several (split). Zero: DefaultMaxBatchBytes.
	MaxBatchBytes int
	// AckTimeout ends a session whose reducer acknowledged nothing for
	// this long while batches were outstanding: a reducer (or a path to
	// it) that went away without closing the connection would otherwise
	// hold the stream until TCP gives up, up to about 15 minutes. Zero:
	// DefaultAckTimeout.
	AckTimeout time.Duration
	// AckEvery: the first report of a session, then every AckEvery-th,
	// asks for an ack, which covers the reports before it too. AckEvery
	// reports and one more must fit in AckTimeout, so that a reducer that
	// works is never taken for stalled. Zero: DefaultAckEvery, or fewer
	// where that does not fit.
	AckEvery int

	NodeName         string
	BootID           string
	CollectorVersion string
	KernelRelease    string
}

// Client streams the socket table's batches to the reducer, reconnecting
// with backoff for as long as its context lives.
type Client struct {
	cfg    Config
	table  Table
	rep    Reporter
	src    Source
	log    *slog.Logger
	creds  credentials.TransportCredentials
	m      *metrics
	epoch  uint64 // epoch of the latest session
	acked  atomic.Uint64
	pollOK bool
	zstd   atomic.Bool // the last welcome named compression_zstd
	// resumer is the table, if it keeps what unconfirmed reports took.
	resumer resumer
	// pending are the reports of the current or latest session that the
	// reducer has not confirmed, oldest first.
	pending []inFlight
	// lookupHost resolves the reducer's name; net.DefaultResolver's when nil.
	lookupHost func(ctx context.Context, host string) ([]string, error)
}

// New returns a Client; it loads the TLS files, if any.
func New(cfg Config, table Table, rep Reporter, src Source, reg prometheus.Registerer, logger *slog.Logger) (*Client, error) {
	if cfg.Interval <= 0 {
		return nil, errors.New("interval must be positive")
	}
	if cfg.InitialBackoff <= 0 || cfg.MaxBackoff < cfg.InitialBackoff {
		return nil, errors.New("backoff must be positive, max not below initial")
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout(cfg.Interval)
	}
	if cfg.AckTimeout < 0 {
		return nil, errors.New("ack timeout must not be negative")
	}
	if cfg.AckEvery == 0 {
		cfg.AckEvery = max(1, min(DefaultAckEvery, int(cfg.AckTimeout/cfg.Interval)-1))
	}
	if cfg.AckEvery < 0 {
		return nil, errors.New("ack every: must not be negative")
	}
	if !AcksFit(cfg.AckEvery, cfg.Interval, cfg.AckTimeout) {
		return nil, fmt.Errorf("an ack every %d reports of %s does not come within the ack timeout %s with a report to spare", cfg.AckEvery, cfg.Interval, cfg.AckTimeout)
	}
	if cfg.MaxBatchBytes < minBatchBytes {
		return nil, fmt.Errorf("max batch bytes %d: below the minimum %d", cfg.MaxBatchBytes, minBatchBytes)
	}
	creds, err := transportCredentials(cfg, reg)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, table: table, rep: rep, src: src, log: logger.With("component", "stream"), creds: creds, pollOK: true}
	c.resumer, _ = table.(resumer)
	if c.m, err = newMetrics(reg, src); err != nil {
		return nil, err
	}
	return c, nil
}

// LastAcked returns the sequence number of the last batch the reducer
// acknowledged in the current or latest session.
func (c *Client) LastAcked() uint64 {
	return c.acked.Load()
}

// Run keeps a session to the reducer until ctx is done. It never fails:
// every error ends the session, is logged, and is retried after a backoff.
// While disconnected it keeps polling the sockets so that owners and
// counters stay fresh, but builds no batches.
func (c *Client) Run(ctx context.Context) error {
	c.log.Info("stream starting", "reducer", c.cfg.Addr, "interval", c.cfg.Interval)
	defer c.log.Info("stream stopped")
	ticker := time.NewTicker(c.cfg.Interval)
	defer ticker.Stop()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = c.cfg.InitialBackoff
	bo.MaxInterval = min(c.cfg.MaxBackoff, c.cfg.Interval)
	bo.Reset()
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.m.reconnects.Inc()
		}
		up, err := c.session(ctx, ticker)
		c.m.connected.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errZstd) || errors.Is(err, errMoved) {
			c.log.Info("reconnecting", "reducer", c.cfg.Addr, "reason", err)
			bo.Reset()
			continue
		}
		if up {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		c.log.Warn("reducer unreachable", "reducer", c.cfg.Addr, "error", err, "retry_in", wait)
		if !c.idle(ctx, ticker, wait) {
			return nil
		}
	}
}

// idle waits for d while polling the sockets every interval. It returns
// false when ctx is done.
func (c *Client) idle(ctx context.Context, ticker *time.Ticker, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-ticker.C:
			c.poll()
		}
	}
}

// session runs one stream until it fails or ctx is done. up reports
// whether the reducer acknowledged at least one batch.
func (c *Client) session(ctx context.Context, ticker *time.Ticker) (up bool, err error) {
	var pressure <-chan struct{} // nil, never ready, for a table without one
	if p, ok := c.table.(pressurer); ok {
		pressure = p.Pressure()
	}
	target, authority := c.pick(ctx)
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(c.creds),
		grpc.WithStatsHandler(wireBytes{c.m.sentBytes}),
	}
	if authority != "" {
		// TLS checks the reducer's certificate against the Service name.
		opts = append(opts, grpc.WithAuthority(authority))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	// The stream outlives ctx by stopGrace at most: a collector that stops
	// ends it and waits for the reducer to ack what it sent.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	compressor := gzip.Name
	if c.zstd.Load() {
		compressor = zstdName
	}
	st, err := ingestv1.NewIngestServiceClient(conn).Stream(sctx, grpc.UseCompressor(compressor), grpc.ForceCodecV2(wireCodec{}))
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}

	prevEpoch := c.epoch
	c.epoch = max(uint64(time.Now().UnixNano()), c.epoch+1)
	hello := &ingestv1.Hello{
		ProtocolVersion:    ProtocolVersion,
		MinProtocolVersion: MinProtocolVersion,
		Capabilities:       slices.Clone(capabilities),
		NodeName:           c.cfg.NodeName,
		BootId:             c.cfg.BootID,
		CollectorVersion:   c.cfg.CollectorVersion,
		KernelRelease:      c.cfg.KernelRelease,
		ReportInterval:     durationpb.New(c.cfg.Interval),
		Epoch:              c.epoch,
	}
	// The receiver owns Recv; it reports the stream's end on errc.
	errc := make(chan error, 1)
	done := make(chan struct{})
	var acked atomic.Bool
	c.acked.Store(0)
	// progress is when the session last heard from the reducer: its start,
	// then each ack (unix nanoseconds).
	var progress atomic.Int64
	progress.Store(time.Now().UnixNano())
	// upgrade is signalled by the receiver at the first ack of a gzip
	// session whose welcome named zstd.
	upgrade := make(chan struct{}, 1)
	// welcomed delivers the reducer's first answer's welcome (nil for a
	// reducer that sends none).
	welcomed := make(chan *ingestv1.Welcome, 1)
	go func() {
		defer close(done)
		first := true
		for {
			resp, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			if first {
				first = false
				if err := c.negotiated(resp.GetWelcome()); err != nil {
					errc <- err
					return
				}
				welcomed <- resp.GetWelcome()
			}
			if a := resp.GetAck(); a != nil {
				// An ack covers every batch up to its sequence.
				if n, prev := a.GetSequence(), c.acked.Load(); n > prev {
					c.m.acks.Add(float64(n - prev))
				}
				c.acked.Store(a.GetSequence())
				progress.Store(time.Now().UnixNano())
				acked.Store(true)
				if compressor != zstdName && c.zstd.Load() {
					select {
					case upgrade <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	var seq uint64
	reports := 0 // of this session
	defer func() {
		cancel()
		<-done
		c.confirm(c.acked.Load())
		if a := c.acked.Load(); seq > a {
			c.m.unacked.Add(float64(seq - a))
		}
	}()
	send := func(req *ingestv1.StreamRequest) error {
		err := st.Send(req)
		if errors.Is(err, io.EOF) {
			// The stream ended; its status comes from the receiver.
			err = <-errc
		}
		return err
	}

	if err := send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: hello}}); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	// The welcome says what the reducer applied of the session this one
	// replaces: what it did not goes out again in this one.
	// Without reports pending, nothing waits for it.
	if len(c.pending) > 0 {
		var welcome *ingestv1.Welcome
		d := min(welcomeWait, c.cfg.AckTimeout)
		wait := time.NewTimer(d)
		select {
		case welcome = <-welcomed:
		case err := <-errc:
			errc <- err // the loop below reports it
		case <-wait.C:
			c.log.Warn("no welcome from the reducer: the reports it may have missed are not sent again", "waited", d)
		case <-ctx.Done():
		}
		wait.Stop()
		c.resume(prevEpoch, welcome)
	}
	c.rep.Resync()
	resolved := time.Now()
	c.m.connected.Set(1)
	c.log.Info("connected", "reducer", c.cfg.Addr, "epoch", c.epoch)

	// The first batch, the snapshot of everything live, goes out at once.
	for tick := true; ; {
		if tick && c.acked.Load() < seq {
			if quiet := time.Since(time.Unix(0, progress.Load())); quiet > c.cfg.AckTimeout {
				c.m.stalls.Inc()
				return acked.Load(), fmt.Errorf("%w: %d of %d batches unacknowledged, nothing heard for %s",
					errStalled, seq-c.acked.Load(), seq, quiet.Round(time.Millisecond))
			}
		}
		if tick {
			c.poll()
			// Before the report: its drain reuses the entries of the
			// drains confirmed (sockets.Table.Confirm), usually the last.
			c.confirm(c.acked.Load())
			b := c.rep.Report(time.Now())
			c.fillLoss(b)
			pieces := split(b, c.cfg.MaxBatchBytes)
			if len(pieces) > 1 {
				c.m.splitReports.Inc()
				c.log.Info("report split into several batches", "batches", len(pieces), "max_batch_bytes", c.cfg.MaxBatchBytes)
			}
			if c.resumer != nil {
				// Pending from before the first send: a send that fails
				// leaves its report to the next session to settle.
				c.pending = append(c.pending, inFlight{first: seq + 1, last: seq + uint64(len(pieces)), gen: c.resumer.Drains()})
			}
			// The first report asks for an ack (a gzip session moves to
			// zstd at its first ack), then every AckEvery-th; the last
			// piece of a report asks for all of it.
			wanted := reports%c.cfg.AckEvery == 0
			reports++
			pieces[len(pieces)-1].AckWanted = wanted
			for _, p := range pieces {
				seq++
				p.Sequence = seq
				if err := send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: p}}); err != nil {
					return acked.Load(), fmt.Errorf("send batch: %w", err)
				}
				c.m.batches.Inc()
				c.m.updates.Add(float64(len(p.GetStats().GetHandleGaps())))
			}

		}
		select {
		case <-ctx.Done():
			// The reducer applies and acks what was sent, then ends the
			// stream.
			_ = st.CloseSend()
			select {
			case <-done:
			case <-time.After(stopGrace):
			}
			return acked.Load(), nil
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				err = errors.New("reducer closed the stream")
			}
			if errors.Is(err, errVersion) {
				return acked.Load(), err
			}
			return acked.Load(), fmt.Errorf("receive: %w", err)
		case <-upgrade:
			if c.acked.Load() != seq {
				// A batch sent since is not acked yet: ending the stream
				// now could lose it. The next ack signals again.
				tick = false
				continue
			}
			// Everything sent so far is acked; the changes since are
			// in the table and go out on the zstd stream.
			_ = st.CloseSend()
			return true, errZstd
		case <-pressure:
			// Closed sockets near --buffer-bytes: report now rather than
			// drop the oldest before the next tick.
			tick = true
			c.m.earlyReports.Inc()
		case <-ticker.C:
			tick = true
			if authority != "" && time.Since(resolved) >= resolveEvery {
				resolved = time.Now()
				if next, _ := c.pick(ctx); next != target {
					c.log.Info("reducer set changed: moving", "from", target, "to", next)
					// The reducer applies and acks what was sent, then ends
					// the stream: cancelling before that could lose it.
					_ = st.CloseSend()
					select {
					case <-done:
					case <-time.After(moveGrace):
					}
					return true, errMoved
				}
			}
		}
	}
}

// AcksFit reports whether an ack every n reports of interval comes within
// the ack timeout with a report to spare. One report always fits: the
// timeout is checked only at a report, while one is outstanding.
func AcksFit(n int, interval, timeout time.Duration) bool {
	return n == 1 || time.Duration(n+1)*interval <= timeout
}

// DefaultAckTimeout is the ack timeout for a report interval: five
// intervals, at least 30 s, so that a reducer slowed by a large scrape or
// a burst of batches is not taken for gone.
func DefaultAckTimeout(interval time.Duration) time.Duration {
	return max(30*time.Second, 5*interval)
}

// errStalled is a session whose reducer stopped acknowledging batches.
var errStalled = errors.New("reducer stopped acknowledging batches")

// stopGrace bounds the wait for the reducer to ack the last batches and
// end the stream when the collector stops.
const stopGrace = time.Second

// moveGrace bounds the wait for the old reducer to end a stream that the
// collector closed to move to another.
const moveGrace = 5 * time.Second

// confirm tells the table that the reducer applied every report whose
// batches are all at or below sequence applied.
func (c *Client) confirm(applied uint64) {
	r := c.resumer
	if r == nil {
		return
	}
	n := 0
	for n < len(c.pending) && c.pending[n].last <= applied {
		n++
	}
	if n > 0 {
		r.Confirm(c.pending[n-1].gen)
		c.pending = slices.Delete(c.pending, 0, n)
	}
}

// resume settles, at the start of a session, the reports of the previous
// one that the reducer had not acknowledged. If the welcome names that
// session, the reducer applied its batches up to its resume sequence: the
// reports after it are undone in the table and go out again with this
// session's first report. Otherwise (a restarted reducer, an expired
// session, no welcome) nothing is sent again, as the reducer kept nothing
// of that session to add them to.
func (c *Client) resume(prevEpoch uint64, w *ingestv1.Welcome) {
	r := c.resumer
	if r == nil {
		return
	}
	if prevEpoch == 0 || w.GetResumeEpoch() != prevEpoch {
		r.Confirm(r.Drains())
		c.pending = c.pending[:0]
		return
	}
	applied := w.GetResumeSequence()
	// A report split over several batches and applied in part cannot be
	// undone in part: it counts as applied.
	n := 0
	for n < len(c.pending) && c.pending[n].first <= applied {
		n++
	}
	if n > 0 {
		r.Confirm(c.pending[n-1].gen)
	}
	if undone := r.Rollback(); undone > 0 {
		c.m.resumed.Add(float64(len(c.pending) - n))
		c.log.Info("sending again what the reducer did not apply", "reports", len(c.pending)-n, "applied_sequence", applied)
	}
	c.pending = c.pending[:0]
}

// errVersion is a reducer that chose a protocol version outside the range
// the collector offered.
var errVersion = errors.New("reducer chose an unsupported protocol version")

// negotiated checks the reducer's first answer and logs the session's
// protocol version. A Welcome carries the version the reducer chose; an
// older reducer sends none and answers with Acks at version 1.
func (c *Client) negotiated(w *ingestv1.Welcome) error {
	if w == nil {
		c.log.Info("session accepted without a welcome (older reducer)", "protocol_version", MinProtocolVersion)
		return nil
	}
	v := w.GetProtocolVersion()
	if v < MinProtocolVersion || v > ProtocolVersion {
		return fmt.Errorf("%w: %d, offered %d to %d", errVersion, v, MinProtocolVersion, ProtocolVersion)
	}
	c.log.Info("session accepted", "protocol_version", v, "capabilities", w.GetCapabilities())
	c.zstd.Store(slices.Contains(w.GetCapabilities(), capZstd))
	return nil
}

// poll waits for the pending lifecycle events, then reads the socket
// storage into the table. Errors are counted, and logged when polling starts or
// stops failing.
func (c *Client) poll() {
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	syncErr := c.src.Sync(ctx)
	cancel()
	err := c.table.Poll(c.src)
	if err == nil {
		err = syncErr
	}
	if err != nil {
		c.m.pollErrors.Inc()
	}
	switch {
	case err != nil && c.pollOK:
		c.log.Warn("socket poll failing", "error", err)
	case err == nil && !c.pollOK:
		c.log.Info("socket poll recovered")
	}
	c.pollOK = err == nil
}

func (c *Client) fillLoss(b *ingestv1.Batch) {
	d := c.m.drops()
	b.Loss.RingFull = d.RingFull
	// The wire field keeps its name; the kernel no longer has a socket
	// map but can fail to allocate a socket's storage.
	b.Loss.MapFull = d.StorageFull
}
