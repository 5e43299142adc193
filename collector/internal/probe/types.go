package probe

import (
	"errors"
	"net/netip"
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

const (
	// EventOpen: a socket entered the socket map, either on
	// SYN_SENT/SYN_RECV -> ESTABLISHED or, for a socket found already
	// open, on its first send or receive.
	EventOpen EventKind = iota + 1
	// EventClose: a tracked socket moved to TCP_CLOSE and left the map.
	// Counters hold its final values.
	EventClose
	// EventListen: a socket started listening (CLOSE -> LISTEN, in the
	// listen() syscall, so Owner is the listening process).
	EventListen
)

// Counters are a socket's cumulative tcp_sock counters, as the kernel keeps them.
type Counters struct {
	BytesAcked    uint64 // tcp_sock.bytes_acked: payload bytes sent and acked
	BytesReceived uint64 // tcp_sock.bytes_received: payload bytes received
	SegsDelivered uint64 // tcp_sock.delivered: data segments delivered to the peer
	DataSegsIn    uint64 // tcp_sock.data_segs_in: data segments received
}

// Owner is the process that uses a socket. PID 0 means not known yet.
type Owner struct {
	PID  uint32 // tgid
	Comm string // comm of the thread group leader
}

// Event is one lifecycle event from the ring buffer.
type Event struct {
	Kind       EventKind
	Role       Role
	Sock       uint64 // kernel address of the struct sock: the socket map key
	LocalAddr  netip.Addr
	LocalPort  uint16
	RemoteAddr netip.Addr
	RemotePort uint16
	NetNS      uint32 // network namespace inode
	Owner      Owner
	Counters   Counters
}

// Sample is one socket map entry as polled by user space.
type Sample struct {
	Sock     uint64
	Owner    Owner
	Counters Counters
}

// Drops are the probe's cumulative loss counters.
type Drops struct {
	RingFull uint64 // events lost because the ring buffer was full
	MapFull  uint64 // sockets not tracked because the socket map was full
}
