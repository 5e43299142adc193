package probe

import (
	"errors"
	"net/netip"
	"time"
)

// ErrNotSupported is returned when the running kernel lacks a feature the
// probe needs. The wrapping error names the feature.
var ErrNotSupported = errors.New("not supported")

// ErrClosed is returned by ReadEvent after Close.
var ErrClosed = errors.New("probe closed")

// Role is which side of a TCP connection a socket is.
type Role uint8

const (
	// RoleUnknown is a socket found already open: the probe did not see it
	// being established.
	RoleUnknown Role = iota
	// RoleClient is a socket that called connect().
	RoleClient
	// RoleServer is a socket accepted from a listener.
	RoleServer
)

// EventKind is the kind of a lifecycle event.
type EventKind uint8

// There is no open event: a socket established while the probe is loaded
// is first reported by a sample (Role client or server, counters from the
// handshake), or, if it closes before the next walk, by its close event.
// The values match the kernel's enum event_kind; 1 is no longer used.
const (
	// EventClose: a tracked socket moved to TCP_CLOSE. Counters hold its
	// final values, from the handshake for a socket established while the
	// probe was loaded; the socket is not sampled again.
	EventClose EventKind = 2
	// EventListen: a socket started listening (CLOSE -> LISTEN, in the
	// listen() syscall, so Owner is the listening process), or, from
	// Discover, a listener that existed before the probe was loaded.
	EventListen EventKind = 3
	// EventExisting: from Discover only, a connected socket that existed
	// before the probe was loaded. Counters are its values at discovery:
	// the baseline, not traffic to count. Owner is unknown (PID 0) unless
	// the kernel knew it; Inode lets user space find the owner in /proc.
	EventExisting EventKind = 4
	// EventFailed: a connect() that never established (SYN_SENT -> CLOSE
	// with an error). Reason says why; Endpoint is the client's (role
	// client), Owner the process that connected. It is all there is of
	// the socket: it is never sampled.
	EventFailed EventKind = 5
	// EventReset: a tracked socket that had closed sent or received a RST
	// after its close event (close() with SO_LINGER 0 or unread data sends
	// the RST just after the move to CLOSE). Counters are its final
	// values again, with the reset counted.
	EventReset EventKind = 6
	// EventOrphan: where the sampling walk goes over open files (walk.go),
	// a tracked socket that its process closed with data still to send: a
	// sample, taken at the close(), of a socket no later walk reaches
	// (orphans belong to no process) until its close event, which can
	// come seconds later. Counters and Owner are as in a sample.
	EventOrphan EventKind = 7
)

// FailReason is why a connect failed; it matches enum fail_reason in
// bpf/tcp.h.
type FailReason uint8

// Reasons of EventFailed.
const (
	FailNone FailReason = iota
	// FailRefused: the peer answered the SYN with a RST (ECONNREFUSED).
	FailRefused
	// FailTimeout: the SYN retransmissions ran out (ETIMEDOUT).
	FailTimeout
	// FailUnreachable: another error, e.g. an ICMP unreachable.
	FailUnreachable
)

// String returns the reason's label value.
func (r FailReason) String() string {
	switch r {
	case FailRefused:
		return "refused"
	case FailTimeout:
		return "timeout"
	case FailUnreachable:
		return "unreachable"
	}
	return "none"
}

// Counters are a socket's cumulative tcp_sock counters, with what is not
// payload (SYN, FIN) taken out. The segment counters are the kernel's u32
// fields: they wrap, and user space takes differences modulo 2^32.
type Counters struct {
	BytesAcked    uint64 // tcp_sock.bytes_acked: payload bytes sent and acked
	BytesReceived uint64 // tcp_sock.bytes_received: payload bytes received
	SegsDelivered uint32 // tcp_sock.delivered: segments delivered to the peer, SYN taken out
	DataSegsIn    uint32 // tcp_sock.data_segs_in: data segments received
	// Retransmits is tcp_sock.total_retrans: segments retransmitted,
	// SYN retransmissions included. A u32 that wraps.
	Retransmits uint32
	// ResetsSent and ResetsRecv count the RSTs the socket sent and
	// received while tracked (kept in its socket storage).
	ResetsSent uint32
	ResetsRecv uint32
	// SRTT is the smoothed round-trip time (tcp_sock.srtt_us >> 3), at
	// microsecond resolution; 0 before the first measurement. A gauge.
	SRTT time.Duration
}

// Owner is the process that uses a socket. PID 0 means not known yet.
type Owner struct {
	PID       uint32 // tgid, in the root pid namespace
	StartTime uint64 // start of the thread group leader, in clock ticks since boot (as /proc/PID/stat field 22)
	CgroupID  uint64 // cgroup v2 id of the process when it was seen using the socket; 0 if unknown
	Comm      string // comm of the thread group leader
}

// Endpoint is what identifies a socket: its cookie and its addresses.
type Endpoint struct {
	Cookie     uint64 // bpf_get_socket_cookie: unique per socket for the boot
	Role       Role
	LocalAddr  netip.Addr
	LocalPort  uint16
	RemoteAddr netip.Addr
	RemotePort uint16
	NetNS      uint32 // network namespace inode
}

// Event is one lifecycle event from the ring buffer, or from Discover.
type Event struct {
	Kind EventKind
	Endpoint
	Inode    uint64     // inode of the socket's file; 0 when it has none (Discover only)
	Reason   FailReason // EventFailed only
	Owner    Owner
	Counters Counters
}

// Sample is one tracked socket's current state, read at poll time from the
// socket storage in every network namespace. Owner is zero while unknown
// (an accepted socket whose listener was open before the probe, a discovered one),
// and for one poll if a new owner was being written at that instant.
type Sample struct {
	Endpoint
	Owner    Owner
	Counters Counters
}

// Drops are the probe's cumulative loss counters.
type Drops struct {
	RingFull    uint64 // events lost because the ring buffer was full
	StorageFull uint64 // sockets not tracked because their socket storage could not be allocated
	// SampleFallbacks counts samples written through the iterator's
	// seq_file because the sample ring was full: each walk that had one
	// was chunked and may have repeated or missed a socket (see Samples).
	SampleFallbacks uint64
	// UDPRingFull counts UDP close records lost because their ring was
	// full: that traffic since the last poll is lost. RingFull includes
	// it, and StorageFull includes UDPStorageFull.
	UDPRingFull uint64
	// UDPStorageFull counts UDP datagrams (or binds) not counted because
	// the socket's storage could not be allocated.
	UDPStorageFull uint64
	// UDPUnattributed counts datagrams of unconnected sockets whose remote
	// was not known (the thread moved to another CPU in the call); they
	// are counted under other peers.
	UDPUnattributed uint64
	// UDPSampleFallbacks is SampleFallbacks for the UDP walk.
	UDPSampleFallbacks uint64
}

// ProgramStats is the in-kernel cost of one program since it was loaded.
// Runs and RunTime stay 0 unless BPF run-time statistics are enabled
// (Config.Stats, or the sysctl kernel.bpf_stats_enabled). Missed is
// always counted (Linux 5.12 on): the runs the kernel skipped because a
// BPF program was already running on that CPU, e.g. one interrupted by a
// softirq whose packet fires the same hook. The event such a run would
// have reported is lost.
type ProgramStats struct {
	Name    string
	Runs    uint64
	RunTime time.Duration
	Missed  uint64
}
