package encode

import (
	"fmt"
	"net/netip"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// decoder is a minimal reducer-side model of the ingest protocol: it applies
// batches in the documented order and fails on any protocol violation.
type decoder struct {
	procs   map[uint32]*ingestv1.Process
	socks   map[uint32]*decodedSocket
	totals  map[string]sums   // by connection tuple, live or closed
	opened  map[string]int    // new_connection announcements by tuple
	owners  map[string]string // last known owner comm by tuple
	nextSeq uint64
}

// sums are the decoded counter totals of a connection.
type sums struct {
	bytesSent, bytesReceived, segsSent, segsReceived uint64
}

type decodedSocket struct {
	key     string
	process uint32
}

func newDecoder() *decoder {
	d := &decoder{totals: map[string]sums{}, opened: map[string]int{}, owners: map[string]string{}}
	d.newEpoch()
	return d
}

// newEpoch drops all handles, as the reducer does on a new Hello.
func (d *decoder) newEpoch() {
	d.procs = map[uint32]*ingestv1.Process{}
	d.socks = map[uint32]*decodedSocket{}
	d.nextSeq = 0
}

func tupleKey(netns uint32, local netip.Addr, lport uint16, remote netip.Addr, rport uint16) string {
	return fmt.Sprintf("%d/%s/%s", netns, netip.AddrPortFrom(local, lport), netip.AddrPortFrom(remote, rport))
}

func (d *decoder) apply(b *ingestv1.Batch) error {
	for _, p := range b.GetProcesses() {
		if p.Handle == 0 {
			return fmt.Errorf("process handle 0 announced")
		}
		if _, ok := d.procs[p.Handle]; ok {
			return fmt.Errorf("process handle %d announced while live", p.Handle)
		}
		d.procs[p.Handle] = p
	}
	for _, s := range b.GetSockets() {
		if s.Handle == 0 {
			return fmt.Errorf("socket handle 0 announced")
		}
		if _, ok := d.socks[s.Handle]; ok {
			return fmt.Errorf("socket handle %d announced while live", s.Handle)
		}
		if s.Cookie == 0 {
			return fmt.Errorf("socket handle %d announced without a cookie", s.Handle)
		}
		if err := d.checkProcess(s.Process); err != nil {
			return err
		}
		local, _ := netip.AddrFromSlice(s.LocalAddr)
		remote, _ := netip.AddrFromSlice(s.RemoteAddr)
		k := tupleKey(s.Netns, local, uint16(s.LocalPort), remote, uint16(s.RemotePort))
		d.socks[s.Handle] = &decodedSocket{key: k, process: s.Process}
		if s.NewConnection {
			d.opened[k]++
		}
		d.owners[k] = d.procs[s.Process].GetComm()
	}
	for _, o := range b.GetOwners() {
		s, ok := d.socks[o.Socket]
		if !ok {
			return fmt.Errorf("owner of unknown socket %d", o.Socket)
		}
		if err := d.checkProcess(o.Process); err != nil {
			return err
		}
		s.process = o.Process
		d.owners[s.key] = d.procs[o.Process].GetComm()
	}
	st := b.GetStats()
	n := len(st.GetHandleGaps())
	if len(st.GetBytesSent()) != n || len(st.GetBytesReceived()) != n || len(st.GetSegmentsSent()) != n || len(st.GetSegmentsReceived()) != n {
		return fmt.Errorf("stats columns of unequal length")
	}
	var h uint32
	for i, gap := range st.GetHandleGaps() {
		if gap == 0 {
			return fmt.Errorf("stats handle gap 0 at %d", i)
		}
		h += gap
		s, ok := d.socks[h]
		if !ok {
			return fmt.Errorf("stats for unknown socket %d", h)
		}
		c := d.totals[s.key]
		c.bytesSent += st.BytesSent[i]
		c.bytesReceived += st.BytesReceived[i]
		c.segsSent += st.SegmentsSent[i]
		c.segsReceived += st.SegmentsReceived[i]
		d.totals[s.key] = c
	}
	for _, h := range b.GetClosedSockets() {
		if _, ok := d.socks[h]; !ok {
			return fmt.Errorf("close of unknown socket %d", h)
		}
		delete(d.socks, h)
	}
	for _, h := range b.GetForgottenProcesses() {
		if _, ok := d.procs[h]; !ok {
			return fmt.Errorf("forget of unknown process %d", h)
		}
		for sh, s := range d.socks {
			if s.process == h {
				return fmt.Errorf("process %d forgotten while socket %d uses it", h, sh)
			}
		}
		delete(d.procs, h)
	}
	return nil
}

func (d *decoder) checkProcess(h uint32) error {
	if h == 0 {
		return nil
	}
	if _, ok := d.procs[h]; !ok {
		return fmt.Errorf("unknown process %d", h)
	}
	return nil
}
