// Package dns turns the DNS payloads of local clients into per-flow answer
// counts by response code, latencies and timeouts, and into the names that
// answers gave to addresses.
package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/procs"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// Config bounds a Tracker.
type Config struct {
	// Timeout is how long a query waits for its answer before it counts as
	// a timeout (flag --dns-timeout).
	Timeout time.Duration
	// MaxPending caps the queries awaiting an answer; a query beyond is not
	// followed, and counted.
	MaxPending int
	// MaxFlows caps the client and server pairs of one interval; queries of
	// pairs beyond are counted only in the collector's metrics.
	MaxFlows int
	// MaxDurations caps the latencies sent per flow and interval; answers
	// beyond count by response code only.
	MaxDurations int
	// MaxAnswers caps the names sent per interval.
	MaxAnswers int
	// MaxStreams caps the DNS-over-TCP stream directions reassembled at
	// once (each keeps at most 4 KiB of its message in progress); segments
	// of streams beyond are dropped and counted.
	MaxStreams int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Timeout: 5 * time.Second, MaxPending: 65536, MaxFlows: 4096, MaxDurations: 4096, MaxAnswers: 4096, MaxStreams: 1024}
}

// Validate reports a bad field, named by its flag.
func (c Config) Validate() error {
	if c.Timeout <= 0 {
		return fmt.Errorf("--dns-timeout: %s is not positive", c.Timeout)
	}
	if c.MaxPending <= 0 || c.MaxFlows <= 0 || c.MaxDurations < 0 || c.MaxAnswers < 0 || c.MaxStreams <= 0 {
		return errors.New("dns: caps must be positive")
	}
	return nil
}

// Describer describes the process that sent a query.
type Describer interface {
	Describe(pid uint32, startTime uint64, comm string) procs.Info
}

// Events is the kernel's stream of DNS payloads.
type Events interface {
	ReadEvent() (probe.DNSEvent, error)
}

type pendingKey struct {
	cookie uint64
	server netip.AddrPort
	id     uint16
}

type pending struct {
	sent time.Duration // monotonic
	flow flowKey
}

type flowKey struct {
	client    netip.Addr
	server    netip.AddrPort
	netns     uint32
	comm      string
	cgroupID  uint64
	container string
}

type flow struct {
	rcodes    map[uint32]uint64
	timeouts  uint64
	durations []uint32
}

type answer struct {
	addrs map[netip.Addr]struct{}
	ttl   uint32
}

// Tracker matches queries with their answers. It is safe for concurrent
// use.
type Tracker struct {
	cfg   Config
	procs Describer
	now   func() time.Duration // monotonic, the clock of the events

	mu          sync.Mutex
	pending     map[pendingKey]pending
	flows       map[flowKey]*flow
	answers     map[string]*answer
	streams     map[streamKey]*stream // DNS over TCP (tcp.go)
	parseErrors uint64

	m *metrics
}

// New returns a tracker whose metrics are registered with reg. procs may be
// nil: queries then carry the sender's comm only.
func New(cfg Config, procs Describer, reg prometheus.Registerer) (*Tracker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Tracker{
		cfg:     cfg,
		procs:   procs,
		now:     monotonic,
		pending: make(map[pendingKey]pending),
		flows:   make(map[flowKey]*flow),
		answers: make(map[string]*answer),
		streams: make(map[streamKey]*stream),
		m:       m,
	}, nil
}

func monotonic() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// Follow applies the events of src until it fails (ErrClosed after Close).
func (t *Tracker) Follow(ctx context.Context, src Events) error {
	for {
		ev, err := src.ReadEvent()
		if errors.Is(err, probe.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		t.Apply(ev)
	}
}

// Apply records one payload: a UDP datagram's message, or a TCP segment's
// part of a stream of messages.
func (t *Tracker) Apply(ev probe.DNSEvent) {
	if ev.TCP {
		t.tcpSegment(ev)
		return
	}
	t.message(ev)
}

// message records one DNS message.
func (t *Tracker) message(ev probe.DNSEvent) {
	var p dnsmessage.Parser
	h, err := p.Start(ev.Payload)
	if err != nil {
		t.parseError()
		return
	}
	q, err := p.Question()
	if err != nil && !errors.Is(err, dnsmessage.ErrSectionDone) {
		t.parseError()
		return
	}
	if ev.Egress {
		if h.Response {
			return // a local server's answer: not a client's
		}
		t.query(ev, h, q)
		return
	}
	if !h.Response {
		return
	}
	t.answer(ev, h, q, &p)
}

func (t *Tracker) parseError() {
	t.mu.Lock()
	t.parseErrors++
	t.mu.Unlock()
	t.m.parseErrors.Inc()
}

func (t *Tracker) query(ev probe.DNSEvent, h dnsmessage.Header, q dnsmessage.Question) {
	t.m.queries.WithLabelValues(typeName(q.Type)).Inc()
	fk := flowKey{client: ev.Src.Addr().Unmap(), server: unmap(ev.Dst), netns: ev.NetNS, comm: ev.Comm, cgroupID: ev.CgroupID}
	if t.procs != nil && ev.PID != 0 {
		info := t.procs.Describe(ev.PID, 0, ev.Comm)
		fk.container = info.Container.ID
	}
	k := pendingKey{cookie: ev.Cookie, server: fk.server, id: h.ID}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.pending[k]; !ok && len(t.pending) >= t.cfg.MaxPending {
		t.m.pendingDropped.Inc()
		return
	}
	// A retry under the same id waits from its own send.
	t.pending[k] = pending{sent: ev.Time, flow: fk}
}

func (t *Tracker) answer(ev probe.DNSEvent, h dnsmessage.Header, q dnsmessage.Question, p *dnsmessage.Parser) {
	k := pendingKey{cookie: ev.Cookie, server: unmap(ev.Src), id: h.ID}
	rcode := uint32(h.RCode)
	t.m.answers.WithLabelValues(h.RCode.String()).Inc()
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	var addrs []netip.Addr
	ttl := uint32(0)
	if h.RCode == dnsmessage.RCodeSuccess && name != "" {
		addrs, ttl = records(p)
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	pq, ok := t.pending[k]
	if !ok {
		// Unasked (a spoof, a duplicate) or already timed out.
		t.m.unmatched.Inc()
		return
	}
	delete(t.pending, k)
	f := t.flow(pq.flow)
	if f != nil {
		f.rcodes[rcode]++
		if len(f.durations) < t.cfg.MaxDurations {
			d := max(ev.Time-pq.sent, 0)
			f.durations = append(f.durations, uint32(min(d.Microseconds(), 1<<32-1)))
		} else {
			t.m.durationsDropped.Inc()
		}
	}
	if len(addrs) == 0 {
		return
	}
	a := t.answers[name]
	if a == nil {
		if len(t.answers) >= t.cfg.MaxAnswers {
			t.m.answersDropped.Inc()
			return
		}
		a = &answer{addrs: make(map[netip.Addr]struct{}, len(addrs)), ttl: ttl}
		t.answers[name] = a
	}
	a.ttl = min(a.ttl, ttl)
	for _, addr := range addrs {
		a.addrs[addr] = struct{}{}
	}
}

// flow returns the flow of k in this interval, nil at the cap.
func (t *Tracker) flow(k flowKey) *flow {
	f := t.flows[k]
	if f == nil {
		if len(t.flows) >= t.cfg.MaxFlows {
			t.m.flowsDropped.Inc()
			return nil
		}
		f = &flow{rcodes: make(map[uint32]uint64, 1)}
		t.flows[k] = f
	}
	return f
}

// records returns the A and AAAA addresses of the answer section and their
// smallest TTL.
func records(p *dnsmessage.Parser) ([]netip.Addr, uint32) {
	if err := p.SkipAllQuestions(); err != nil {
		return nil, 0
	}
	var addrs []netip.Addr
	ttl := uint32(1<<32 - 1)
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			break
		}
		switch h.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return addrs, ttl
			}
			addrs = append(addrs, netip.AddrFrom4(r.A))
			ttl = min(ttl, h.TTL)
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return addrs, ttl
			}
			addrs = append(addrs, netip.AddrFrom16(r.AAAA).Unmap())
			ttl = min(ttl, h.TTL)
		default:
			if err := p.SkipAnswer(); err != nil {
				return addrs, ttl
			}
		}
	}
	return addrs, ttl
}

// Drain returns the flows and answers since the previous Drain, counting
// as timeouts the queries that waited past the deadline, and the parse
// failures so far.
func (t *Tracker) Drain() (flows []*ingestv1.DnsFlow, answers []*ingestv1.DnsAnswer, parseErrors uint64) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, p := range t.pending {
		if now-p.sent < t.cfg.Timeout {
			continue
		}
		delete(t.pending, k)
		t.m.timeouts.Inc()
		if f := t.flow(p.flow); f != nil {
			f.timeouts++
		}
	}
	t.m.pending.Set(float64(len(t.pending)))
	t.expireStreams(now)
	for k, f := range t.flows {
		wf := &ingestv1.DnsFlow{
			ClientAddr:  k.client.AsSlice(),
			ServerAddr:  k.server.Addr().AsSlice(),
			ServerPort:  uint32(k.server.Port()),
			Netns:       k.netns,
			Comm:        k.comm,
			CgroupId:    k.cgroupID,
			ContainerId: k.container,
			Timeouts:    f.timeouts,
			DurationsUs: f.durations,
		}
		for rc, n := range f.rcodes {
			wf.Responses = append(wf.Responses, &ingestv1.DnsRcodeCount{Rcode: rc, Count: n})
		}
		flows = append(flows, wf)
	}
	clear(t.flows)
	for name, a := range t.answers {
		wa := &ingestv1.DnsAnswer{Name: name, TtlSeconds: a.ttl}
		for addr := range a.addrs {
			wa.Addrs = append(wa.Addrs, addr.AsSlice())
		}
		answers = append(answers, wa)
	}
	clear(t.answers)
	return flows, answers, t.parseErrors
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// typeName names a query type for a metric label; rare types are "other",
// so that the label stays bounded.
func typeName(t dnsmessage.Type) string {
	switch t {
	case dnsmessage.TypeA, dnsmessage.TypeAAAA, dnsmessage.TypeCNAME, dnsmessage.TypeMX, dnsmessage.TypeNS,
		dnsmessage.TypePTR, dnsmessage.TypeSOA, dnsmessage.TypeSRV, dnsmessage.TypeTXT, dnsmessage.TypeSVCB, dnsmessage.TypeHTTPS:
		return strings.TrimPrefix(t.String(), "Type")
	}
	return "other"
}
