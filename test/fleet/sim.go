// Package fleet simulates a fleet of collectors over real gRPC against real
// reducer processes, and keeps the exact figures that each edge of the
// reducers' /metrics must show for what the simulated collectors sent.
package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// Config shapes a simulated fleet and its traffic.
type Config struct {
	Collectors int
	// Sockets is the number of sockets live across the fleet in steady
	// state: a connection with both ends in the fleet has two, one with
	// its peer outside the fleet has one.
	Sockets int
	// CrossShare is the share of connections whose both ends are in the
	// fleet, on two different nodes; the others have a peer outside it.
	CrossShare float64
	Interval   time.Duration
	Intervals  int
	// MaxSkew: collector i sends the batch of each interval i%(MaxSkew+1)
	// intervals late.
	MaxSkew int
	// Change is the share of connections with traffic in each interval;
	// Reopen the share closed and opened again on the same 4-tuple (a
	// reused client port) in each interval.
	Change, Reopen float64
	// Short is the number of connections opened, used and closed within
	// one interval, in each interval, across the fleet. Their client ports
	// come from a small range, so that 4-tuples are reused.
	Short int
	// Reconnects is the number of collectors that end their stream and
	// open a new one with a new epoch halfway through, announcing their
	// live sockets again.
	Reconnects int
	// Reducers are the reducers' gRPC addresses; each collector sends to
	// the one that the rendezvous hash of its node name picks.
	Reducers []string
	// Compressor is the gRPC compressor of the streams: "gzip", "zstd" or
	// "" (none).
	Compressor string
	// Pods: each node is a pod of a deployment app-<node%8>, and a watcher
	// streams the pods to every reducer before the collectors start, as
	// the k8s-watcher does: edges are named by deployment, on both ends,
	// and the pods' IPs are fleet addresses for every reducer.
	Pods bool
	// DistinctPeers: every connection with a peer outside the fleet has a
	// peer address of its own (up to 65,536), so that each is an edge.
	DistinctPeers bool
	// Replay builds every interval's batches first, then the collectors
	// send them as fast as the reducer takes them (see replay): the
	// reducer's capacity, with the simulator's building of the batches
	// outside the measured time. It needs Reconnects 0.
	Replay bool
	// AckEvery: one batch in this many asks the reducer for an ack, as
	// the collector's --ack-every does (0: 2, its default); 1 offers no
	// sparse_acks capability, and every batch is acked.
	AckEvery int
	Seed     uint64
}

// Edge is an edge between two workloads, by their names.
type Edge struct{ Src, Dst string }

// Want is what an edge must show.
type Want struct{ Bytes, Packets, Opened, Active uint64 }

// Stats are what the collectors sent.
type Stats struct {
	Updates   uint64 // stats entries
	WireBytes uint64 // compressed message bytes on the wire
	Batches   uint64
}

// Result is what a run sent and what the reducers must show.
type Result struct {
	Edges map[Edge]*Want
	Stats
	// Reconnect is the time from the end of a reconnecting collector's
	// stream to the welcome of its new one, the longest of them.
	Reconnect time.Duration
}

type sock struct {
	handle  uint32
	cookie  uint64
	proc    uint32
	role    ingestv1.Role
	local   netip.AddrPort
	remote  netip.AddrPort
	newConn bool // announced as new in its first batch
}

type node struct {
	id     int
	name   string
	addr   netip.Addr
	handle uint32
	cookie uint64
	live   map[uint32]*sock
	out    chan *item
	b      *builder
	skew   int
	redial bool // reconnects once halfway
}

type conn struct {
	cli, srv   *sock // srv nil when the peer is outside the fleet
	cn, sn     *node
	edge, back Edge // client → server and server → client
}

// builder collects one node's batch of one interval.
type builder struct {
	sockets []*sock
	stats   map[uint32]*[4]uint64
	closed  []uint32
	// closedSocks are the sockets of closed, for a resync.
	closedSocks []*sock
}

// item is a batch to send, or a reconnect before sending it.
type item struct {
	batch  *ingestv1.Batch
	at     time.Time // when to send it
	redial bool
}

// Run simulates the fleet against the reducers until every batch is acked.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.CrossShare == 0 {
		cfg.CrossShare = 0.5
	}
	if cfg.CrossShare < 0 {
		cfg.CrossShare = 0
	}
	if cfg.Replay && cfg.Reconnects > 0 {
		return nil, errors.New("a replay has no reconnects")
	}
	depth := cfg.MaxSkew + 8
	if cfg.Replay {
		depth = cfg.Intervals // every batch is built before the first is sent
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 42))
	res := &Result{Edges: make(map[Edge]*Want)}
	nodes := make([]*node, cfg.Collectors)
	for i := range nodes {
		n := &node{
			id:     i,
			name:   fmt.Sprintf("fleet-%04d", i),
			addr:   netip.AddrFrom4([4]byte{198, 18, byte((i + 1) >> 8), byte(i + 1)}),
			cookie: uint64(i)<<40 | 1,
			live:   make(map[uint32]*sock),
			out:    make(chan *item, depth),
			skew:   i % (cfg.MaxSkew + 1),
			redial: i < cfg.Reconnects,
		}
		nodes[i] = n
	}
	// Connections: cross pairs have two sockets, one-sided ones one.
	nconns := int(float64(cfg.Sockets) / (1 + cfg.CrossShare))
	conns := make([]*conn, 0, nconns)
	for _, n := range nodes {
		n.b = newBuilder()
	}
	nextPort := make([]uint16, len(nodes))
	for i := range nextPort {
		nextPort[i] = 10000
	}
	for i := range nconns {
		cn := nodes[i%len(nodes)]
		port := nextPort[cn.id]
		nextPort[cn.id]++
		var c *conn
		if float64(i%1000) < cfg.CrossShare*1000 && len(nodes) > 1 {
			sn := nodes[(cn.id+1+rng.IntN(len(nodes)-1))%len(nodes)]
			c = newConn(cfg, cn, sn, netip.AddrPortFrom(cn.addr, port), netip.AddrPortFrom(sn.addr, 8080))
		} else {
			ext := netip.AddrFrom4([4]byte{198, 19, 0, byte(1 + rng.IntN(8))})
			if cfg.DistinctPeers {
				ext = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
			}
			c = newConn(cfg, cn, nil, netip.AddrPortFrom(cn.addr, port), netip.AddrPortFrom(ext, 443))
		}
		conns = append(conns, c)
		c.open(res)
		c.traffic(res, rng)
	}
	if cfg.Pods {
		for _, addr := range cfg.Reducers {
			stop, err := watch(ctx, addr, nodes)
			if err != nil {
				return nil, fmt.Errorf("metadata to %s: %w", addr, err)
			}
			defer stop()
		}
	}
	// The intervals start once the connections exist.
	start := time.Now().Add(200 * time.Millisecond)
	var wg sync.WaitGroup
	errc := make(chan error, len(nodes))
	var stats Stats
	var reconnect atomic.Int64
	var rp *replay
	if cfg.Replay {
		rp = newReplay(len(nodes), cfg.Intervals+cfg.MaxSkew)
	}
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if rp != nil {
				err = n.replay(ctx, cfg, &stats, rp)
			} else {
				err = n.send(ctx, cfg, &stats, &reconnect)
			}
			if err != nil {
				errc <- fmt.Errorf("%s: %w", n.name, err)
			}
		}()
	}
	shortPort := make([]uint16, len(nodes))
	for t := range cfg.Intervals {
		if t > 0 {
			for range int(cfg.Reopen * float64(len(conns))) {
				c := conns[rng.IntN(len(conns))]
				c.close()
				c.reopen()
				c.open(res)
				c.traffic(res, rng)
			}
			for range int(cfg.Change * float64(len(conns))) {
				conns[rng.IntN(len(conns))].traffic(res, rng)
			}
			for range cfg.Short {
				cn := nodes[rng.IntN(len(nodes))]
				port := 2000 + shortPort[cn.id]%16
				shortPort[cn.id]++
				var c *conn
				if rng.IntN(2) == 0 && len(nodes) > 1 {
					sn := nodes[(cn.id+1+rng.IntN(len(nodes)-1))%len(nodes)]
					c = newConn(cfg, cn, sn, netip.AddrPortFrom(cn.addr, port), netip.AddrPortFrom(sn.addr, 8081))
				} else {
					c = newConn(cfg, cn, nil, netip.AddrPortFrom(cn.addr, port), netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 0, 200}), 80))
				}
				c.open(res)
				c.traffic(res, rng)
				c.close()
			}
		}
		end := start.Add(time.Duration(t+1) * cfg.Interval)
		for _, n := range nodes {
			it := &item{at: end.Add(time.Duration(n.skew) * cfg.Interval)}
			if n.redial && t == cfg.Intervals/2 {
				it.redial = true
			}
			it.batch = n.flush(end, it.redial || t == 0)
			select {
			case n.out <- it:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	for _, n := range nodes {
		close(n.out)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	for _, c := range conns {
		if c.cli != nil {
			res.Edges[c.edge].Active++
		}
	}
	res.Stats = stats
	res.Reconnect = time.Duration(reconnect.Load())
	return res, nil
}

func newBuilder() *builder { return &builder{stats: make(map[uint32]*[4]uint64)} }

func newConn(cfg Config, cn, sn *node, local, remote netip.AddrPort) *conn {
	c := &conn{cn: cn, sn: sn}
	cli := fmt.Sprintf("cli-%d", cn.id%4)
	if cfg.Pods {
		cli = appOf(cn)
	}
	if sn != nil {
		srv := fmt.Sprintf("srv-%d", sn.id%4)
		if cfg.Pods {
			srv = appOf(sn)
		}
		c.edge, c.back = Edge{cli, srv}, Edge{srv, cli}
	} else {
		ext := remote.Addr().String()
		c.edge, c.back = Edge{cli, ext}, Edge{ext, cli}
	}
	c.cli = cn.socket(1, ingestv1.Role_ROLE_CLIENT, local, remote)
	if sn != nil {
		c.srv = sn.socket(2, ingestv1.Role_ROLE_SERVER, remote, local)
	}
	return c
}

func want(res *Result, e Edge) *Want {
	w := res.Edges[e]
	if w == nil {
		w = &Want{}
		res.Edges[e] = w
	}
	return w
}

// open announces the connection's sockets and counts it opened.
func (c *conn) open(res *Result) {
	c.cn.b.sockets = append(c.cn.b.sockets, c.cli)
	if c.srv != nil {
		c.sn.b.sockets = append(c.sn.b.sockets, c.srv)
	}
	want(res, c.edge).Opened++
}

// traffic sends bytes both ways, as both ends report them.
func (c *conn) traffic(res *Result, rng *rand.Rand) {
	up, down := uint64(1+rng.IntN(10000)), uint64(1+rng.IntN(10000))
	w := want(res, c.edge)
	w.Bytes += up
	w.Packets++
	w = want(res, c.back)
	w.Bytes += down
	w.Packets++
	c.cn.b.stat(c.cli.handle, up, down)
	if c.srv != nil {
		c.sn.b.stat(c.srv.handle, down, up)
	}
}

func (b *builder) stat(h uint32, sent, recv uint64) {
	s := b.stats[h]
	if s == nil {
		s = new([4]uint64)
		b.stats[h] = s
	}
	s[0] += sent
	s[1] += recv
	s[2]++
	s[3]++
}

// close closes both ends.
func (c *conn) close() {
	c.cn.close(c.cli)
	if c.srv != nil {
		c.sn.close(c.srv)
	}
}

// reopen makes new sockets on the same 4-tuple: a reused client port.
func (c *conn) reopen() {
	c.cli = c.cn.socket(1, ingestv1.Role_ROLE_CLIENT, c.cli.local, c.cli.remote)
	if c.srv != nil {
		c.srv = c.sn.socket(2, ingestv1.Role_ROLE_SERVER, c.srv.local, c.srv.remote)
	}
}

func (n *node) socket(proc uint32, role ingestv1.Role, local, remote netip.AddrPort) *sock {
	n.handle++
	n.cookie++
	s := &sock{handle: n.handle, cookie: n.cookie, proc: proc, role: role, local: local, remote: remote, newConn: true}
	n.live[s.handle] = s
	return s
}

func (n *node) close(s *sock) {
	n.b.closed = append(n.b.closed, s.handle)
	n.b.closedSocks = append(n.b.closedSocks, s)
	delete(n.live, s.handle)
}

// flush builds the batch of the interval that ends at end. A first batch of
// a stream announces the processes and every live socket.
func (n *node) flush(end time.Time, first bool) *ingestv1.Batch {
	b := n.b
	n.b = newBuilder()
	out := &ingestv1.Batch{Time: timestamppb.New(end)}
	socks := b.sockets
	if first {
		out.Processes = []*ingestv1.Process{
			{Handle: 1, Pid: uint32(1000 + n.id), Comm: fmt.Sprintf("cli-%d", n.id%4)},
			{Handle: 2, Pid: uint32(2000 + n.id), Comm: fmt.Sprintf("srv-%d", n.id%4)},
		}
		// Everything live before this interval, and what closed in it,
		// again as existing sockets; then what opened in it.
		fresh := make(map[uint32]bool, len(socks))
		for _, s := range socks {
			fresh[s.handle] = true
		}
		all := make([]*sock, 0, len(n.live)+len(b.closedSocks))
		for _, s := range n.live {
			if !fresh[s.handle] {
				all = append(all, &sock{handle: s.handle, cookie: s.cookie, proc: s.proc, role: s.role, local: s.local, remote: s.remote})
			}
		}
		for _, s := range b.closedSocks {
			if !fresh[s.handle] {
				all = append(all, &sock{handle: s.handle, cookie: s.cookie, proc: s.proc, role: s.role, local: s.local, remote: s.remote})
			}
		}
		slices.SortFunc(all, func(a, b *sock) int { return int(a.handle) - int(b.handle) })
		socks = append(all, socks...)
	}
	for _, s := range socks {
		out.Sockets = append(out.Sockets, &ingestv1.Socket{
			Handle: s.handle, Process: s.proc, Role: s.role,
			LocalAddr: s.local.Addr().AsSlice(), LocalPort: uint32(s.local.Port()),
			RemoteAddr: s.remote.Addr().AsSlice(), RemotePort: uint32(s.remote.Port()),
			Netns: 4026531840, NewConnection: s.newConn, Cookie: s.cookie,
		})
	}
	hs := make([]uint32, 0, len(b.stats))
	for h := range b.stats {
		hs = append(hs, h)
	}
	slices.Sort(hs)
	st := &ingestv1.SocketStats{}
	var prev uint32
	for _, h := range hs {
		v := b.stats[h]
		st.HandleGaps = append(st.HandleGaps, h-prev)
		prev = h
		st.BytesSent = append(st.BytesSent, v[0])
		st.BytesReceived = append(st.BytesReceived, v[1])
		st.SegmentsSent = append(st.SegmentsSent, v[2])
		st.SegmentsReceived = append(st.SegmentsReceived, v[3])
	}
	out.Stats = st
	out.ClosedSockets = b.closed
	return out
}

// collectorDial is how a simulated collector dials, as weir-collector does
// (with gRPC's dynamic windows).
func collectorDial() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64 << 20)),
	}
}

// Pick returns the reducer of node among addrs: the rendezvous hash of the
// node name and each address, highest wins.
func Pick(node string, addrs []string) string {
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

// dial connects the node to its reducer (Pick), as weir-collector dials,
// and returns the call options of its streams: the compressor.
func (n *node) dial(cfg Config) (*grpc.ClientConn, []grpc.CallOption, error) {
	cc, err := grpc.NewClient(Pick(n.name, cfg.Reducers), collectorDial()...)
	if err != nil {
		return nil, nil, err
	}
	var opts []grpc.CallOption
	switch cfg.Compressor {
	case "gzip":
		opts = append(opts, grpc.UseCompressor(gzip.Name))
	case Zstd:
		opts = append(opts, grpc.UseCompressor(Zstd))
	}
	return cc, opts, nil
}

// send runs the node's streams: it sends each batch at its time, and
// reconnects with a new epoch where a batch says so.
func (n *node) send(ctx context.Context, cfg Config, stats *Stats, reconnect *atomic.Int64) error {
	cc, opts, err := n.dial(cfg)
	if err != nil {
		return err
	}
	defer cc.Close()
	var epoch uint64
	var st *stream
	defer func() {
		if st != nil {
			// The run already ends with an error of its own, or ctx is
			// done: whether the last batches were acked adds nothing.
			_ = st.end()
		}
	}()
	for it := range n.out {
		if st == nil || it.redial {
			var ended time.Time
			if st != nil {
				if err := st.end(); err != nil {
					return err
				}
				ended = time.Now()
			}
			epoch++
			if st, err = open(ctx, cc, n, epoch, cfg.Interval, cfg.AckEvery, opts); err != nil {
				return err
			}
			if !ended.IsZero() {
				d := int64(time.Since(ended))
				for {
					cur := reconnect.Load()
					if d <= cur || reconnect.CompareAndSwap(cur, d) {
						break
					}
				}
			}
		}
		if d := time.Until(it.at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		st.number(it.batch)
		req := &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: it.batch}}
		if err := st.s.Send(req); err != nil {
			return fmt.Errorf("send batch %d: %w", st.seq, st.wait(err))
		}
		atomic.AddUint64(&stats.Updates, uint64(len(it.batch.GetStats().GetHandleGaps())))
		atomic.AddUint64(&stats.Batches, 1)
	}
	err = st.end()
	st = nil
	return err
}

type stream struct {
	s        grpc.BidiStreamingClient[ingestv1.StreamRequest, ingestv1.StreamResponse]
	cancel   func()
	seq      uint64
	ackEvery uint64
	acked    atomic.Uint64
	acks     chan struct{} // a token after each ack
	done     chan error
}

// defaultAckEvery is the collector's default --ack-every.
const defaultAckEvery = 2

// open opens a collector's stream. One batch in ackEvery (0: the
// collector's default) asks for an ack; with 1 the hello does not offer
// sparse acks.
func open(ctx context.Context, cc *grpc.ClientConn, n *node, epoch uint64, interval time.Duration, ackEvery int, opts []grpc.CallOption) (*stream, error) {
	sctx, cancel := context.WithCancel(ctx)
	s, err := ingestv1.NewIngestServiceClient(cc).Stream(sctx, opts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open stream: %w", err)
	}
	st := &stream{s: s, cancel: cancel, ackEvery: uint64(cmp.Or(ackEvery, defaultAckEvery)), acks: make(chan struct{}, 1), done: make(chan error, 1)}
	caps := []string{"socket_cookie"}
	if st.ackEvery > 1 {
		caps = append(caps, "sparse_acks")
	}
	hello := &ingestv1.Hello{
		ProtocolVersion: 1, NodeName: n.name, BootId: "boot-" + n.name, Epoch: epoch,
		ReportInterval: durationpb.New(interval), Capabilities: caps,
	}
	if err := s.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: hello}}); err != nil {
		cancel()
		return nil, fmt.Errorf("send hello: %w", err)
	}
	if _, err := s.Recv(); err != nil {
		cancel()
		return nil, fmt.Errorf("welcome: %w", err)
	}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				st.done <- err
				return
			}
			if a := r.GetAck(); a != nil {
				st.acked.Store(a.GetSequence())
				select {
				case st.acks <- struct{}{}:
				default:
				}
			}
		}
	}()
	return st, nil
}

// number gives b the stream's next sequence and asks for its ack as a
// collector does: the first batch, then one in ackEvery.
func (st *stream) number(b *ingestv1.Batch) {
	st.seq++
	b.Sequence = st.seq
	b.AckWanted = st.seq%st.ackEvery == 1%st.ackEvery
}

// wait returns the stream's status after a failed send.
func (st *stream) wait(err error) error {
	select {
	case e := <-st.done:
		return e
	case <-time.After(5 * time.Second):
		return err
	}
}

// end closes the stream and waits until every batch is acked: the reducer
// acks the last one it applied when the collector ends the stream.
func (st *stream) end() error {
	defer st.cancel()
	_ = st.s.CloseSend()
	deadline := time.After(60 * time.Second)
	for st.acked.Load() < st.seq {
		select {
		case <-st.acks:
		case err := <-st.done:
			if st.acked.Load() < st.seq {
				return fmt.Errorf("stream ended with %d of %d batches acked: %w", st.acked.Load(), st.seq, err)
			}
		case <-deadline:
			return fmt.Errorf("%d of %d batches acked after 60 s", st.acked.Load(), st.seq)
		}
	}
	return nil
}

// appOf is the deployment of a node's pod in Pods mode.
func appOf(n *node) string { return fmt.Sprintf("app-%d", n.id%8) }

// watch streams a snapshot of the nodes' pods to the reducer at addr, as a
// k8s-watcher does, and waits for its ack. stop ends the stream.
func watch(ctx context.Context, addr string, nodes []*node) (stop func(), err error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	stop = func() { cancel(); cc.Close() }
	s, err := metadatav1.NewMetadataServiceClient(cc).Stream(sctx)
	if err != nil {
		stop()
		return nil, err
	}
	send := func(r *metadatav1.StreamRequest) {
		if err == nil {
			err = s.Send(r)
		}
	}
	send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Hello{Hello: &metadatav1.Hello{Cluster: "fleet", Watcher: "sim", Epoch: 1}}})
	if err == nil {
		_, err = s.Recv() // the welcome
	}
	send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotStart{SnapshotStart: &metadatav1.SnapshotStart{Epoch: 1, Version: 1, Objects: uint32(len(nodes))}}})
	ds := &metadatav1.Deltas{Version: 1}
	created := time.Now().Add(-time.Hour).UnixNano()
	for _, n := range nodes {
		ds.Deltas = append(ds.Deltas, &metadatav1.Delta{Version: 1, Object: &metadatav1.Delta_Pod{Pod: &metadatav1.Pod{
			Uid: "uid-" + n.name, Name: appOf(n) + "-" + n.name, Namespace: "fleet", Node: n.name,
			Ips: []string{n.addr.String()}, Workload: &metadatav1.Workload{Kind: "deployment", Name: appOf(n)},
			Phase: metadatav1.PodPhase_POD_PHASE_RUNNING, CreationTimeUnixNano: created,
		}}})
	}
	send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_Deltas{Deltas: ds}})
	send(&metadatav1.StreamRequest{Kind: &metadatav1.StreamRequest_SnapshotEnd{SnapshotEnd: &metadatav1.SnapshotEnd{Version: 1}}})
	if err == nil {
		_, err = s.Recv() // the snapshot's ack
	}
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}
