package match

import (
	"fmt"
	"net/netip"
	"time"
)

// Role is which side of a TCP connection a socket is.
type Role uint8

// Roles of a socket.
const (
	RoleUnspecified Role = iota
	RoleClient
	RoleServer
)

// Hello opens a session for a node.
type Hello struct {
	Node   string
	BootID string
	Epoch  uint64
	// ReportInterval is the collector's report interval; 0 if unknown.
	ReportInterval time.Duration
}

// Process is a process announced under a new handle.
type Process struct {
	Handle    uint32
	PID       uint32
	Comm      string
	Cgroup    string
	StartTime uint64
	CgroupID  uint64
	// From the collector's process table: parent, executable, command
	// line, and what the cgroup path says (container id, pod UID).
	PPID        uint32
	Executable  string
	Cmdline     string
	ContainerID string
	PodUID      string
}

// Socket is one end of a TCP connection announced under a new handle.
type Socket struct {
	Handle        uint32
	Process       uint32
	Role          Role
	Local         netip.AddrPort
	Remote        netip.AddrPort
	Netns         uint32
	NewConnection bool
	Cookie        uint64
}

// Owner sets the owning process of a socket; process 0 means unknown.
type Owner struct {
	Socket  uint32
	Process uint32
}

// Stats holds counter deltas in columns; entry i of every column belongs to
// the socket Handles[i].
type Stats struct {
	Handles          []uint32
	BytesSent        []uint64
	BytesReceived    []uint64
	SegmentsSent     []uint64
	SegmentsReceived []uint64
	// Optional columns: empty when all zero, else one entry per handle.
	Retransmits    []uint64
	ResetsSent     []uint64
	ResetsReceived []uint64
	SrttUs         []uint32
}

// Batch is one decoded batch of a session, applied as a whole or not at all.
// Its parts apply in field order.
type Batch struct {
	// Continued: more batches of the same report follow. What a report
	// implies as a whole (closing the replaced session's sockets that the
	// first report did not announce again) waits for its last batch.
	Continued bool
	Sequence  uint64
	Time      time.Time // the end of the interval it reports; zero if unknown
	Processes []Process
	Sockets   []Socket
	Owners    []Owner
	Stats     Stats
	Closed    []uint32
	Forgotten []uint32
	// Failed are the connects that failed, applied after Stats.
	Failed []FailedConnect
	// UDP is the UDP traffic of the interval, applied after Failed.
	UDP []UDPFlow
	// DNS is what the node's clients asked DNS servers during the interval,
	// applied by ApplyDNS.
	DNSFlows   []DNSFlow
	DNSAnswers []DNSAnswer
}

// Shrink lets go of the parts that grew beyond n entries and more than
// four times what this batch used: after the snapshot that opens a stream,
// a pooled batch that a small one reuses does not keep the snapshot's
// buffers, and a node whose every batch is large (connection churn) reuses
// them instead of growing new ones each time.
func (b *Batch) Shrink(n int) {
	if Oversized(cap(b.Processes), len(b.Processes), n) {
		b.Processes = nil
	}
	if Oversized(cap(b.Sockets), len(b.Sockets), n) {
		b.Sockets = nil
	}
	if Oversized(cap(b.Owners), len(b.Owners), n) {
		b.Owners = nil
	}
	if Oversized(cap(b.Stats.Handles), len(b.Stats.Handles), 16*n) {
		b.Stats.Handles = nil
	}
	if Oversized(cap(b.Closed), len(b.Closed), n) {
		b.Closed = nil
	}
}

// Oversized says whether a pooled buffer of capacity c, of which l was
// used, is to be let go: beyond n and more than four times the use.
func Oversized(c, l, n int) bool { return c > n && c > 4*l }

// Reset empties the batch and keeps its capacity for the next one.
func (b *Batch) Reset() {
	*b = Batch{
		Processes: b.Processes[:0],
		Sockets:   b.Sockets[:0],
		Owners:    b.Owners[:0],
		Stats:     Stats{Handles: b.Stats.Handles[:0]},
		Closed:    b.Closed[:0],
		Forgotten: b.Forgotten[:0],
		Failed:    b.Failed[:0],
		UDP:       b.UDP[:0],

		DNSFlows:   b.DNSFlows[:0],
		DNSAnswers: b.DNSAnswers[:0],
	}
}

// Reason classifies why the engine refused a hello or a batch.
type Reason string

// Reasons for refusing input.
const (
	ReasonStaleEpoch      Reason = "stale_epoch"
	ReasonUnknownHandle   Reason = "unknown_handle"
	ReasonDuplicateHandle Reason = "duplicate_handle"
	ReasonInvalidHandle   Reason = "invalid_handle"
	ReasonSessionReplaced Reason = "session_replaced"
)

// Error is a refusal of input that names the problem.
type Error struct {
	Reason Reason
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func refuse(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}
