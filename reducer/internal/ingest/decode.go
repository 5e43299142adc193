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
	dst.Sequence, dst.Continued = seq, in.GetContinued()
	if t := in.GetTime(); t != nil {
		dst.Time = t.AsTime()
	}
	for _, p := range in.GetProcesses() {
		dst.Processes = append(dst.Processes, decodeProcess(p))
	}
	for i, s := range in.GetSockets() {
		ws := wireSocket{
			handle: s.GetHandle(), process: s.GetProcess(), role: int32(s.GetRole()),
			localAddr: s.GetLocalAddr(), localPort: s.GetLocalPort(), remoteAddr: s.GetRemoteAddr(), remotePort: s.GetRemotePort(),
			netns: s.GetNetns(), newConnection: s.GetNewConnection(), cookie: s.GetCookie(),
		}
		if n := s.GetNat(); n != nil {
			ws.nat = true
			ws.natLocal, ws.natLocalPort, ws.natRemote, ws.natRemotePort = n.GetLocalAddr(), n.GetLocalPort(), n.GetRemoteAddr(), n.GetRemotePort()
		}
		k, err := decodeSocket(&ws)
		if err != nil {
			return fmt.Errorf("batch %d: socket %d: %w", seq, i, err)
		}
		dst.Sockets = append(dst.Sockets, k)
	}
	for _, o := range in.GetOwners() {
		dst.Owners = append(dst.Owners, match.Owner{Socket: o.GetSocket(), Process: o.GetProcess()})
	}
	if err := DecodeStats(&dst.Stats, in.GetStats()); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	if err := decodeFailed(dst, seq, in.GetFailedConnects()); err != nil {
		return err
	}
	if err := decodeUDP(dst, seq, in.GetUdpFlows()); err != nil {
		return err
	}
	dst.Closed = append(dst.Closed, in.GetClosedSockets()...)
	dst.Forgotten = append(dst.Forgotten, in.GetForgottenProcesses()...)
	if err := decodeDNS(dst, in); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	return nil
}

func decodeProcess(p *ingestv1.Process) match.Process {
	return match.Process{
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
	}
}

// decodeSocket checks and decodes an announced socket.
func decodeSocket(s *wireSocket) (match.Socket, error) {
	local, err := endpoint(s.localAddr, s.localPort)
	if err != nil {
		return match.Socket{}, fmt.Errorf("local %w", err)
	}
	remote, err := endpoint(s.remoteAddr, s.remotePort)
	if err != nil {
		return match.Socket{}, fmt.Errorf("remote %w", err)
	}
	if s.nat {
		// The connection as its peer sees it, after NAT: a client of a
		// virtual IP joins the backend's socket.
		if local, err = endpoint(s.natLocal, s.natLocalPort); err != nil {
			return match.Socket{}, fmt.Errorf("nat local %w", err)
		}
		if remote, err = endpoint(s.natRemote, s.natRemotePort); err != nil {
			return match.Socket{}, fmt.Errorf("nat remote %w", err)
		}
	}
	role, err := decodeRole(ingestv1.Role(s.role))
	if err != nil {
		return match.Socket{}, err
	}
	return match.Socket{
		Handle:        s.handle,
		Process:       s.process,
		Role:          role,
		Local:         local,
		Remote:        remote,
		Netns:         s.netns,
		NewConnection: s.newConnection,
		Cookie:        s.cookie,
	}, nil
}

func decodeFailed(dst *match.Batch, seq uint64, in []*ingestv1.FailedConnect) error {
	for i, f := range in {
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
	return nil
}

func decodeUDP(dst *match.Batch, seq uint64, in []*ingestv1.UdpFlow) error {
	for i, f := range in {
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
	return nil
}

// DecodeStats checks the columns of a stats message and decodes the handle
// gaps into handles, appending them to dst.Handles. The counter columns are
// shared with in, not copied.
func DecodeStats(dst *match.Stats, in *ingestv1.SocketStats) error {
	return decodeStatsColumns(dst, in.GetHandleGaps(), in.GetBytesSent(), in.GetBytesReceived(), in.GetSegmentsSent(), in.GetSegmentsReceived(),
		in.GetRetransmits(), in.GetResetsSent(), in.GetResetsReceived(), in.GetSrttUs())
}

// decodeStatsColumns is DecodeStats on the columns of a stats message.
func decodeStatsColumns(dst *match.Stats, gaps []uint32, sent, recv, segsSent, segsRecv, retransmits, resetsSent, resetsRecv []uint64, srtt []uint32) error {
	n := len(gaps)
	columns := [...]struct {
		name string
		len  int
	}{
		{"bytes_sent", len(sent)},
		{"bytes_received", len(recv)},
		{"segments_sent", len(segsSent)},
		{"segments_received", len(segsRecv)},
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
		{"retransmits", len(retransmits)},
		{"resets_sent", len(resetsSent)},
		{"resets_received", len(resetsRecv)},
		{"srtt_us", len(srtt)},
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
	dst.BytesSent = sent
	dst.BytesReceived = recv
	dst.SegmentsSent = segsSent
	dst.SegmentsReceived = segsRecv
	dst.Retransmits = retransmits
	dst.ResetsSent = resetsSent
	dst.ResetsReceived = resetsRecv
	dst.SrttUs = srtt
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
	return decodeDNSParts(dst, in.GetDnsFlows(), in.GetDnsAnswers())
}

func decodeDNSParts(dst *match.Batch, flows []*ingestv1.DnsFlow, answers []*ingestv1.DnsAnswer) error {
	for i, f := range flows {
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
	for i, a := range answers {
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
