package ingest

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// DecodeBatch checks the parts of a wire batch that need no session state
// and decodes it into dst, reusing dst's buffers.
func DecodeBatch(dst *match.Batch, in *ingestv1.Batch) error {
	dst.Reset()
	seq := in.GetSequence()
	dst.Sequence = seq
	if t := in.GetTime(); t != nil {
		dst.Time = t.AsTime()
	}
	for _, p := range in.GetProcesses() {
		dst.Processes = append(dst.Processes, match.Process{
			Handle:    p.GetHandle(),
			PID:       p.GetPid(),
			Comm:      p.GetComm(),
			Cgroup:    p.GetCgroup(),
			StartTime: p.GetStartTime(),
			CgroupID:  p.GetCgroupId(),

			PPID:        p.GetPpid(),
			Executable:  p.GetExecutable(),
			Cmdline:     p.GetCmdline(),
			ContainerID: p.GetContainerId(),
			PodUID:      p.GetPodUid(),
		})
	}
	for i, s := range in.GetSockets() {
		local, err := endpoint(s.GetLocalAddr(), s.GetLocalPort())
		if err != nil {
			return fmt.Errorf("batch %d: socket %d: local %w", seq, i, err)
		}
		remote, err := endpoint(s.GetRemoteAddr(), s.GetRemotePort())
		if err != nil {
			return fmt.Errorf("batch %d: socket %d: remote %w", seq, i, err)
		}
		if n := s.GetNat(); n != nil {
			// The connection as its peer sees it, after NAT: a client of a
			// virtual IP joins the backend's socket.
			if local, err = endpoint(n.GetLocalAddr(), n.GetLocalPort()); err != nil {
				return fmt.Errorf("batch %d: socket %d: nat local %w", seq, i, err)
			}
			if remote, err = endpoint(n.GetRemoteAddr(), n.GetRemotePort()); err != nil {
				return fmt.Errorf("batch %d: socket %d: nat remote %w", seq, i, err)
			}
		}
		role, err := decodeRole(s.GetRole())
		if err != nil {
			return fmt.Errorf("batch %d: socket %d: %w", seq, i, err)
		}
		dst.Sockets = append(dst.Sockets, match.Socket{
			Handle:        s.GetHandle(),
			Process:       s.GetProcess(),
			Role:          role,
			Local:         local,
			Remote:        remote,
			Netns:         s.GetNetns(),
			NewConnection: s.GetNewConnection(),
			Cookie:        s.GetCookie(),
		})
	}
	for _, o := range in.GetOwners() {
		dst.Owners = append(dst.Owners, match.Owner{Socket: o.GetSocket(), Process: o.GetProcess()})
	}
	if err := DecodeStats(&dst.Stats, in.GetStats()); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	for i, f := range in.GetFailedConnects() {
		local, err := endpoint(f.GetLocalAddr(), f.GetLocalPort())
		if err != nil {
			return fmt.Errorf("batch %d: failed connect %d: local %w", seq, i, err)
		}
		remote, err := endpoint(f.GetRemoteAddr(), f.GetRemotePort())
		if err != nil {
			return fmt.Errorf("batch %d: failed connect %d: remote %w", seq, i, err)
		}
		dst.Failed = append(dst.Failed, match.FailedConnect{
			Process:        f.GetProcess(),
			Local:          local,
			Remote:         remote,
			Netns:          f.GetNetns(),
			Reason:         match.ConnectFailure(min(uint32(f.GetReason()), uint32(match.ConnectUnreachable))),
			SynRetransmits: f.GetSynRetransmits(),
		})
	}
	for i, f := range in.GetUdpFlows() {
		local, err := endpoint(f.GetLocalAddr(), f.GetLocalPort())
		if err != nil {
			return fmt.Errorf("batch %d: UDP flow %d: local %w", seq, i, err)
		}
		var remote netip.AddrPort
		if len(f.GetRemoteAddr()) != 0 {
			if remote, err = endpoint(f.GetRemoteAddr(), f.GetRemotePort()); err != nil {
				return fmt.Errorf("batch %d: UDP flow %d: remote %w", seq, i, err)
			}
		}
		dst.UDP = append(dst.UDP, match.UDPFlow{
			Process:           f.GetProcess(),
			Local:             local,
			Remote:            remote,
			Netns:             f.GetNetns(),
			BytesSent:         f.GetBytesSent(),
			BytesReceived:     f.GetBytesReceived(),
			DatagramsSent:     f.GetDatagramsSent(),
			DatagramsReceived: f.GetDatagramsReceived(),
			Drops:             f.GetDrops(),
			PeerLocal:         f.GetPeerLocal(),
		})
	}
	dst.Closed = append(dst.Closed, in.GetClosedSockets()...)
	dst.Forgotten = append(dst.Forgotten, in.GetForgottenProcesses()...)
	if err := decodeDNS(dst, in); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	return nil
}

// DecodeStats checks the columns of a stats message and decodes the handle
// gaps into handles, appending them to dst.Handles. The counter columns are
// shared with in, not copied.
func DecodeStats(dst *match.Stats, in *ingestv1.SocketStats) error {
	gaps := in.GetHandleGaps()
	n := len(gaps)
	columns := [...]struct {
		name string
		len  int
	}{
		{"bytes_sent", len(in.GetBytesSent())},
		{"bytes_received", len(in.GetBytesReceived())},
		{"segments_sent", len(in.GetSegmentsSent())},
		{"segments_received", len(in.GetSegmentsReceived())},
	}
	for _, c := range columns {
		if c.len != n {
			return fmt.Errorf("stats: column %s has %d entries, handle_gaps has %d", c.name, c.len, n)
		}
	}
	// The optional columns are empty (all zero) or full.
	optional := [...]struct {
		name string
		len  int
	}{
		{"retransmits", len(in.GetRetransmits())},
		{"resets_sent", len(in.GetResetsSent())},
		{"resets_received", len(in.GetResetsReceived())},
		{"srtt_us", len(in.GetSrttUs())},
	}
	for _, c := range optional {
		if c.len != 0 && c.len != n {
			return fmt.Errorf("stats: column %s has %d entries, handle_gaps has %d", c.name, c.len, n)
		}
	}
	handles := dst.Handles[:0]
	var h uint64
	for i, g := range gaps {
		if i > 0 && g == 0 {
			return fmt.Errorf("stats entry %d: handle gap 0 (handles must ascend)", i)
		}
		h += uint64(g)
		if h > math.MaxUint32 {
			return fmt.Errorf("stats entry %d: handle exceeds 32 bits", i)
		}
		handles = append(handles, uint32(h))
	}
	dst.Handles = handles
	dst.BytesSent = in.GetBytesSent()
	dst.BytesReceived = in.GetBytesReceived()
	dst.SegmentsSent = in.GetSegmentsSent()
	dst.SegmentsReceived = in.GetSegmentsReceived()
	dst.Retransmits = in.GetRetransmits()
	dst.ResetsSent = in.GetResetsSent()
	dst.ResetsReceived = in.GetResetsReceived()
	dst.SrttUs = in.GetSrttUs()
	return nil
}

// endpoint decodes an address of 4 or 16 bytes and a port.
func endpoint(addr []byte, port uint32) (netip.AddrPort, error) {
	a, ok := netip.AddrFromSlice(addr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address has %d bytes (want 4 or 16)", len(addr))
	}
	if port > math.MaxUint16 {
		return netip.AddrPort{}, fmt.Errorf("port %d exceeds 65535", port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

func decodeRole(r ingestv1.Role) (match.Role, error) {
	switch r {
	case ingestv1.Role_ROLE_UNSPECIFIED:
		return match.RoleUnspecified, nil
	case ingestv1.Role_ROLE_CLIENT:
		return match.RoleClient, nil
	case ingestv1.Role_ROLE_SERVER:
		return match.RoleServer, nil
	}
	return 0, fmt.Errorf("unknown role %d", r)
}

// decodeDNS decodes the DNS flows and answers of a batch.
func decodeDNS(dst *match.Batch, in *ingestv1.Batch) error {
	for i, f := range in.GetDnsFlows() {
		client, ok := netip.AddrFromSlice(f.GetClientAddr())
		if !ok {
			return fmt.Errorf("dns flow %d: client address has %d bytes (want 4 or 16)", i, len(f.GetClientAddr()))
		}
		server, err := endpoint(f.GetServerAddr(), f.GetServerPort())
		if err != nil {
			return fmt.Errorf("dns flow %d: server %w", i, err)
		}
		df := match.DNSFlow{
			Client: client.Unmap(), Server: server, Netns: f.GetNetns(), Comm: f.GetComm(),
			CgroupID: f.GetCgroupId(), ContainerID: f.GetContainerId(), Timeouts: f.GetTimeouts(),
		}
		for _, r := range f.GetResponses() {
			df.Responses = append(df.Responses, match.DNSCount{RCode: r.GetRcode(), Count: r.GetCount()})
		}
		for _, us := range f.GetDurationsUs() {
			df.Durations = append(df.Durations, time.Duration(us)*time.Microsecond)
		}
		dst.DNSFlows = append(dst.DNSFlows, df)
	}
	for i, a := range in.GetDnsAnswers() {
		da := match.DNSAnswer{Name: a.GetName(), TTL: time.Duration(a.GetTtlSeconds()) * time.Second}
		if da.Name == "" {
			return fmt.Errorf("dns answer %d: empty name", i)
		}
		for j, b := range a.GetAddrs() {
			addr, ok := netip.AddrFromSlice(b)
			if !ok {
				return fmt.Errorf("dns answer %d: address %d has %d bytes (want 4 or 16)", i, j, len(b))
			}
			da.Addrs = append(da.Addrs, addr.Unmap())
		}
		dst.DNSAnswers = append(dst.DNSAnswers, da)
	}
	return nil
}
