package match

import (
	"container/heap"
	"net/netip"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// DNSFlow is what one client address of a node asked one DNS server during
// an interval.
type DNSFlow struct {
	Client netip.Addr
	Server netip.AddrPort
	// The querying process, as far as the collector knew it.
	Netns       uint32
	Comm        string
	CgroupID    uint64
	ContainerID string
	Responses   []DNSCount
	Timeouts    uint64
	// Durations are query to answer times.
	Durations []time.Duration
}

// DNSCount counts the answers with one response code.
type DNSCount struct {
	RCode uint32
	Count uint64
}

// DNSAnswer is a name and the addresses an answer gave it.
type DNSAnswer struct {
	Name  string
	Addrs []netip.Addr
	TTL   time.Duration
}

// DNS names stay at least dnsMinTTL, since a connection to an address
// outlives the answer's TTL, and at most dnsMaxTTL.
const (
	dnsMinTTL = 10 * time.Minute
	dnsMaxTTL = time.Hour
	// dnsMaxNames caps the addresses named by DNS; beyond, the name that
	// expires first goes.
	dnsMaxNames = 1 << 16
)

// ApplyDNS counts the DNS flows of b on the edges from each client to its
// server (weir_dns_*), after Apply.
func (e *Engine) ApplyDNS(s *Session, b *Batch) {
	if len(b.DNSFlows) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gone {
		return
	}
	now := e.now()
	for i := range b.DNSFlows {
		f := &b.DNSFlows[i]
		src := e.resolver.Lookup(resolve.Endpoint{
			Addr: f.Client, Local: true, Node: s.node, Netns: f.Netns,
			Known: f.Comm != "", Comm: f.Comm, CgroupID: f.CgroupID, Container: shortID(f.ContainerID),
		})
		dst := e.resolver.Lookup(resolve.Endpoint{Addr: f.Server.Addr()})
		edge := e.store.Edge(now, aggregate.Key{Src: src, Dst: dst})
		for _, r := range f.Responses {
			edge.Add(now, aggregate.DNSResponses(r.RCode), r.Count)
		}
		if f.Timeouts > 0 {
			edge.Add(now, aggregate.DNSTimeouts, f.Timeouts)
		}
		for _, d := range f.Durations {
			edge.Observe(now, aggregate.DNSDuration, d.Seconds())
		}
	}
}

// NameDNS names the addresses of b's DNS answers by the names asked, for the
// remote ends of flows (resolution rank DNS). It comes before Apply, so
// that a connection to an address opened in the same interval as its
// lookup is named from its first byte.
func (e *Engine) NameDNS(b *Batch) {
	if len(b.DNSAnswers) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if e.dns == nil {
		e.dns = newDNSNames(e.resolver.Sink(resolve.RankDNS), dnsMaxNames)
	}
	e.dns.expire(now)
	for _, a := range b.DNSAnswers {
		ttl := min(max(a.TTL, dnsMinTTL), dnsMaxTTL)
		for _, addr := range a.Addrs {
			e.dns.put(addr, a.Name, now.Add(ttl))
		}
	}
}

// dnsNames are the addresses DNS answers named, each until its expiry. It
// is a bounded map with expiry rather than a cache such as ristretto: an
// eviction must take the name back from the resolver at once, in the
// engine's lock, and the engine has no Close to stop a cache's goroutines.
type dnsNames struct {
	sink   resolve.Sink
	max    int
	byAddr map[netip.Addr]*dnsName
	queue  dnsQueue // by expiry
}

type dnsName struct {
	addr    netip.Addr
	name    string
	expires time.Time
	index   int // in queue
}

func newDNSNames(sink resolve.Sink, maxNames int) *dnsNames {
	return &dnsNames{sink: sink, max: maxNames, byAddr: make(map[netip.Addr]*dnsName)}
}

// put names addr until expires; the latest answer wins.
func (d *dnsNames) put(addr netip.Addr, name string, expires time.Time) {
	addr = addr.Unmap()
	if n := d.byAddr[addr]; n != nil {
		if n.name != name {
			n.name = name
			d.sink.Put(resolve.IPKey(addr), aggregate.Workload{Name: name, Kind: resolve.KindExternal})
		}
		if expires.After(n.expires) {
			n.expires = expires
			heap.Fix(&d.queue, n.index)
		}
		return
	}
	if len(d.byAddr) >= d.max {
		d.drop(heap.Pop(&d.queue).(*dnsName))
	}
	n := &dnsName{addr: addr, name: name, expires: expires}
	d.byAddr[addr] = n
	heap.Push(&d.queue, n)
	d.sink.Put(resolve.IPKey(addr), aggregate.Workload{Name: name, Kind: resolve.KindExternal})
}

// expire drops the names whose time has passed.
func (d *dnsNames) expire(now time.Time) {
	for len(d.queue) > 0 && !d.queue[0].expires.After(now) {
		d.drop(heap.Pop(&d.queue).(*dnsName))
	}
}

func (d *dnsNames) drop(n *dnsName) {
	delete(d.byAddr, n.addr)
	d.sink.Delete(resolve.IPKey(n.addr))
}

type dnsQueue []*dnsName

func (q dnsQueue) Len() int           { return len(q) }
func (q dnsQueue) Less(i, j int) bool { return q[i].expires.Before(q[j].expires) }
func (q dnsQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dnsQueue) Push(x any) {
	n := x.(*dnsName)
	n.index = len(*q)
	*q = append(*q, n)
}
func (q *dnsQueue) Pop() any {
	old := *q
	n := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return n
}
