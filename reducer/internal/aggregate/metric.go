package aggregate

import (
	"fmt"
	"math"
	"slices"
)

// MetricID indexes the values of an edge: it is a metric's position in the
// metric set the Store was made with.
type MetricID uint16

// MetricType is how a metric's values add up.
type MetricType uint8

// Metric types.
const (
	// MetricCounter only grows.
	MetricCounter MetricType = iota
	// MetricGauge goes up and down; an edge with a gauge above zero is live
	// and never expires.
	MetricGauge
	// MetricHistogram counts observations into buckets.
	MetricHistogram
)

// Metric describes one flow metric. Exporters iterate the descriptors, so a
// new metric needs no change to them.
type Metric struct {
	// Name is the Prometheus name, e.g. weir_tcp_bytes_total.
	Name string
	// Help is the Prometheus HELP text.
	Help string
	Type MetricType
	// Buckets are the upper bounds of a histogram's buckets, ascending;
	// only for MetricHistogram.
	Buckets []float64
	// Sparse: a counter whose series appears only once it is above zero,
	// for the rare events (retransmits, resets, failed connects) and the
	// UDP metrics, which most edges never have.
	Sparse bool
	// ConstLabels are labels of the metric's own beyond the edge's, e.g.
	// rcode: several metrics of one Name, one per value, are one family.
	ConstLabels map[string]string
}

// The flow metrics of FlowMetrics, by id.
const (
	TCPBytes MetricID = iota
	TCPPackets
	TCPConnectionsOpened
	TCPActiveConnections
	TCPRetransmits
	TCPResets
	TCPSynTimeouts
	TCPConnectionsRefused
	TCPRTT
	UDPBytes
	UDPPackets
	UDPDrops
	// DNS answers by response code: one metric per rcode label value.
	DNSResponsesNoError
	DNSResponsesFormErr
	DNSResponsesServFail
	DNSResponsesNXDomain
	DNSResponsesNotImp
	DNSResponsesRefused
	DNSResponsesOther
	DNSTimeouts
	DNSDuration
)

// DNSResponses returns the metric of answers with DNS response code rcode.
func DNSResponses(rcode uint32) MetricID {
	switch rcode {
	case 0:
		return DNSResponsesNoError
	case 1:
		return DNSResponsesFormErr
	case 2:
		return DNSResponsesServFail
	case 3:
		return DNSResponsesNXDomain
	case 4:
		return DNSResponsesNotImp
	case 5:
		return DNSResponsesRefused
	}
	return DNSResponsesOther
}

// DNSBuckets are the bounds of weir_dns_duration_seconds: a cache hit on the
// node to a slow recursive resolution.
var DNSBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

const dnsResponsesHelp = "DNS answers to src's queries sent by dst (the DNS server), by response code (other: a code not named)."

func dnsResponses(rcode string) Metric {
	return Metric{Name: "weir_dns_responses_total", Type: MetricCounter, Sparse: true, Help: dnsResponsesHelp,
		ConstLabels: map[string]string{"rcode": rcode}}
}

// RTTBuckets are the bounds of weir_tcp_rtt_seconds: 50 µs (loopback) to
// 2 s (a congested path across continents).
var RTTBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2}

// FlowMetrics returns the flow metrics the reducer serves, indexed by their
// MetricID constants.
func FlowMetrics() []Metric {
	return slices.Clone(flowMetrics)
}

var flowMetrics = []Metric{
	TCPBytes: {Name: "weir_tcp_bytes_total", Type: MetricCounter,
		Help: "TCP payload bytes sent from src to dst, each byte counted once."},
	TCPPackets: {Name: "weir_tcp_packets_total", Type: MetricCounter,
		Help: "TCP segments src delivered to dst, as the sender's kernel counts them (data segments and a FIN sent on its own; not the SYN)."},
	TCPConnectionsOpened: {Name: "weir_tcp_connections_opened_total", Type: MetricCounter,
		Help: "TCP connections src (client) opened to dst (server)."},
	TCPActiveConnections: {Name: "weir_tcp_active_connections", Type: MetricGauge,
		Help: "Open TCP connections, src = client, dst = server."},
	TCPRetransmits: {Name: "weir_tcp_retransmits_total", Type: MetricCounter, Sparse: true,
		Help: "TCP segments src retransmitted toward dst (the sender's tcp_sock.total_retrans)."},
	TCPResets: {Name: "weir_tcp_resets_total", Type: MetricCounter, Sparse: true,
		Help: "TCP RSTs src sent to dst, the larger of the sender's and the receiver's count; a refused connect counts one from the server."},
	TCPSynTimeouts: {Name: "weir_tcp_syn_timeouts_total", Type: MetricCounter, Sparse: true,
		Help: "TCP connects of src (client) to dst that failed because the SYN retries ran out."},
	TCPConnectionsRefused: {Name: "weir_tcp_connections_refused_total", Type: MetricCounter, Sparse: true,
		Help: "TCP connects of src (client) to dst that dst refused with a RST."},
	TCPRTT: {Name: "weir_tcp_rtt_seconds", Type: MetricHistogram, Buckets: RTTBuckets,
		Help: "Smoothed round-trip time measured by src on its connections with dst, one observation per connection with traffic per report interval."},
	UDPBytes: {Name: "weir_udp_bytes_total", Type: MetricCounter, Sparse: true,
		Help: "UDP payload bytes sent from src to dst."},
	UDPPackets: {Name: "weir_udp_packets_total", Type: MetricCounter, Sparse: true,
		Help: "UDP datagrams sent from src to dst."},
	UDPDrops: {Name: "weir_udp_drops_total", Type: MetricCounter, Sparse: true,
		Help: "UDP datagrams from src dropped at dst's socket (receive queue full)."},
	DNSResponsesNoError:  dnsResponses("NOERROR"),
	DNSResponsesFormErr:  dnsResponses("FORMERR"),
	DNSResponsesServFail: dnsResponses("SERVFAIL"),
	DNSResponsesNXDomain: dnsResponses("NXDOMAIN"),
	DNSResponsesNotImp:   dnsResponses("NOTIMP"),
	DNSResponsesRefused:  dnsResponses("REFUSED"),
	DNSResponsesOther:    dnsResponses("other"),
	DNSTimeouts: {Name: "weir_dns_timeouts_total", Type: MetricCounter, Sparse: true,
		Help: "DNS queries of src to dst (the DNS server) left unanswered past the collector's --dns-timeout."},
	DNSDuration: {Name: "weir_dns_duration_seconds", Type: MetricHistogram, Buckets: DNSBuckets,
		Help: "Time from a query of src to the answer of dst (the DNS server), measured at src's node."},
}

// Level is the aggregation level of the edge table: which labels a key has.
// Every level has the workload labels; node and pod add the node, pod adds
// the pod as well, and process adds the process instead.
type Level uint8

// Aggregation levels.
const (
	// LevelWorkload labels edges by workload, kind, namespace and zone.
	LevelWorkload Level = iota
	// LevelNode adds src_node and dst_node.
	LevelNode
	// LevelPod adds src_pod and dst_pod.
	LevelPod
	// LevelProcess adds src_process and dst_process to the workload
	// labels: the comm of the process that owns each end's socket.
	LevelProcess
)

// String returns the level's flag value.
func (l Level) String() string {
	switch l {
	case LevelWorkload:
		return "workload"
	case LevelNode:
		return "node"
	case LevelPod:
		return "pod"
	case LevelProcess:
		return "process"
	}
	return "unknown"
}

// MarshalText returns the level's flag value.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses a flag value: workload, node, pod or process.
func (l *Level) UnmarshalText(b []byte) error {
	for _, v := range []Level{LevelWorkload, LevelNode, LevelPod, LevelProcess} {
		if string(b) == v.String() {
			*l = v
			return nil
		}
	}
	return fmt.Errorf("unknown aggregation level %q (want workload, node, pod or process)", b)
}

// ByNode reports whether the level labels the node: node and pod do.
func (l Level) ByNode() bool { return l == LevelNode || l == LevelPod }

// ByPod reports whether the level labels the pod.
func (l Level) ByPod() bool { return l == LevelPod }

// ByProcess reports whether the level labels the process.
func (l Level) ByProcess() bool { return l == LevelProcess }

// Labels returns the label names of the level, in the order of Key.Values.
func (l Level) Labels() []string {
	out := []string{
		"src_workload", "src_kind", "src_namespace", "src_zone",
		"dst_workload", "dst_kind", "dst_namespace", "dst_zone",
	}
	if l.ByNode() {
		out = append(out, "src_node", "dst_node")
	}
	if l.ByPod() {
		out = append(out, "src_pod", "dst_pod")
	}
	if l.ByProcess() {
		out = append(out, "src_process", "dst_process")
	}
	return out
}

// Values appends the label values of k at level l to dst, in the order of
// l.Labels().
func (k Key) Values(l Level, dst []string) []string {
	dst = append(dst,
		k.Src.Name, k.Src.Kind, k.Src.Namespace, k.Src.Zone,
		k.Dst.Name, k.Dst.Kind, k.Dst.Namespace, k.Dst.Zone)
	if l.ByNode() {
		dst = append(dst, k.Src.Node, k.Dst.Node)
	}
	if l.ByPod() {
		dst = append(dst, k.Src.Pod, k.Dst.Pod)
	}
	if l.ByProcess() {
		dst = append(dst, k.Src.Process, k.Dst.Process)
	}
	return dst
}

// project drops from k the fields that level l does not label, so that the
// edges that differ only in them aggregate into one.
func (k Key) project(l Level) Key {
	if !l.ByProcess() {
		k.Src.Process, k.Dst.Process = "", ""
	}
	if !l.ByPod() {
		k.Src.Pod, k.Dst.Pod = "", ""
	}
	if !l.ByNode() {
		k.Src.Node, k.Dst.Node = "", ""
	}
	return k
}

// Histogram is the state of one histogram metric of an edge: classic
// buckets, and the exponential buckets of a Prometheus native histogram.
type Histogram struct {
	// Counts[i] counts observations at most Buckets[i], not cumulative;
	// the last entry counts those above every bound.
	Counts []uint64
	Count  uint64
	Sum    float64
	// Native counts the observations above zero by native bucket index
	// at NativeSchema: bucket i holds (2^((i-1)/8), 2^(i/8)].
	Native map[int]int64
	// NativeZero counts the observations at or below zero.
	NativeZero uint64
}

// NativeSchema is the resolution of the native buckets: 3, eight buckets
// per power of two (each about 9% wide).
const NativeSchema = 3

// nativeIndex is the native bucket of v > 0 at NativeSchema.
func nativeIndex(v float64) int {
	return int(math.Ceil(math.Log2(v) * (1 << NativeSchema)))
}

// observe adds v to h, whose bucket bounds are bounds.
func (h *Histogram) observe(bounds []float64, v float64) {
	i, _ := slices.BinarySearch(bounds, v)
	h.Counts[i]++
	h.Count++
	h.Sum += v
	if v <= 0 {
		h.NativeZero++
		return
	}
	if h.Native == nil {
		h.Native = make(map[int]int64)
	}
	h.Native[nativeIndex(v)]++
}

// Cumulative returns the counts of observations at most each bound, as
// Prometheus wants them.
func (h *Histogram) Cumulative(bounds []float64) map[float64]uint64 {
	out := make(map[float64]uint64, len(bounds))
	var n uint64
	for i, b := range bounds {
		n += h.Counts[i]
		out[b] = n
	}
	return out
}
