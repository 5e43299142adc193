package probe

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type dns_event dns ../../../bpf/dns.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

// DNSConfig configures the DNS probe.
type DNSConfig struct {
	// RingBytes is the payload ring size, a power of two and a multiple of
	// the page size (flag --dns-ring-bytes). A record takes about 600 bytes.
	RingBytes uint32
	// CgroupRoot is the cgroup-v2 mount the programs attach to; empty: the
	// first cgroup2 mount of /proc/self/mounts (flag --cgroup2-root).
	CgroupRoot string
}

// Validate reports a bad field, named by its flag.
func (c DNSConfig) Validate() error {
	page := uint32(os.Getpagesize())
	if c.RingBytes == 0 || c.RingBytes&(c.RingBytes-1) != 0 || c.RingBytes%page != 0 {
		return fmt.Errorf("--dns-ring-bytes: %d is not a power of two and a multiple of the page size (%d)", c.RingBytes, page)
	}
	return nil
}

// DNSEvent is one DNS payload seen by a local client: a query it sent
// (Egress) or an answer it received.
type DNSEvent struct {
	Time     time.Duration // monotonic clock (CLOCK_MONOTONIC) of the packet
	Cookie   uint64        // the client socket's cookie
	CgroupID uint64        // the client socket's cgroup v2 id
	PID      uint32        // the sender's tgid; 0 for an answer
	NetNS    uint32        // the sender's network namespace; 0 for an answer
	Comm     string        // the sender's comm; empty for an answer
	Egress   bool
	Src, Dst netip.AddrPort
	// TCP: a TCP segment's payload, part of a stream of length-prefixed
	// messages (RFC 1035 4.2.2) that starts at sequence number Seq.
	TCP bool
	Seq uint32
	// Total is the payload's length in the packet; Payload holds its first
	// 512 bytes.
	Total int
	// Payload is the DNS message (UDP) or the segment's payload (TCP), cut
	// to 512 bytes. It is only valid until the next ReadEvent.
	Payload []byte
}

// DNS captures the DNS payloads of local clients with cgroup_skb programs
// on the cgroup-v2 root.
type DNS struct {
	objs   dnsObjects
	links  []link.Link
	reader *pollReader
	record ringbuf.Record

	readMu sync.Mutex
	mu     sync.Mutex
	closed bool
}

// OpenDNS loads the DNS programs and attaches them to the cgroup-v2 root.
func OpenDNS(cfg DNSConfig) (*DNS, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root := cfg.CgroupRoot
	if root == "" {
		var err error
		if root, err = CgroupV2Root(); err != nil {
			return nil, err
		}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("memlock: %w", err)
	}
	spec, err := loadDns()
	if err != nil {
		return nil, fmt.Errorf("load DNS spec: %w", err)
	}
	spec.Maps["dns_events"].MaxEntries = cfg.RingBytes
	if err := spec.Variables[dnsVarWakeupBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	d := &DNS{}
	if err := spec.LoadAndAssign(&d.objs, loadOptions(nil)); err != nil {
		return nil, fmt.Errorf("load DNS programs: %w", err)
	}
	for _, a := range []struct {
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{ebpf.AttachCGroupInetEgress, d.objs.DnsEgress},
		{ebpf.AttachCGroupInetIngress, d.objs.DnsIngress},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: a.attach, Program: a.prog})
		if err != nil {
			_ = d.release()
			return nil, fmt.Errorf("attach %s to %s: %w", a.prog, root, err)
		}
		d.links = append(d.links, l)
	}
	if d.reader, err = newPollReader(d.objs.DnsEvents); err != nil {
		_ = d.release()
		return nil, fmt.Errorf("DNS ring reader: %w", err)
	}
	return d, nil
}

// CgroupV2Root returns the first cgroup2 mount point of /proc/self/mounts:
// /sys/fs/cgroup on a v2 host, /sys/fs/cgroup/unified on a hybrid one.
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", fmt.Errorf("cgroup2 mount: %w", ErrNotSupported)
}

// ReadEvent blocks for the next DNS payload; after Close it returns an
// error wrapping ErrClosed.
func (d *DNS) ReadEvent() (DNSEvent, error) {
	d.readMu.Lock()
	defer d.readMu.Unlock()
	err := d.reader.read(&d.record)
	switch {
	case err == nil:
		return decodeDNSEvent(d.record.RawSample)
	case errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed):
		return DNSEvent{}, fmt.Errorf("read DNS event: %w", ErrClosed)
	}
	return DNSEvent{}, fmt.Errorf("read DNS event: %w", err)
}

func decodeDNSEvent(raw []byte) (DNSEvent, error) {
	if len(raw) < int(unsafe.Sizeof(dnsDnsEvent{})) {
		return DNSEvent{}, fmt.Errorf("DNS event of %d bytes", len(raw))
	}
	ev := (*dnsDnsEvent)(unsafe.Pointer(&raw[0]))
	out := DNSEvent{
		Time:     time.Duration(ev.Time),
		Cookie:   ev.Cookie,
		CgroupID: ev.CgroupId,
		PID:      ev.Pid,
		NetNS:    ev.Netns,
		Egress:   ev.Egress == 1,
		TCP:      ev.Tcp == 1,
		Seq:      ev.Seq,
		Total:    int(ev.Total),
		Payload:  ev.Payload[:min(int(ev.Len), len(ev.Payload))],
	}
	if ev.Pid != 0 {
		out.Comm = comm(&ev.Comm)
	}
	var src, dst netip.Addr
	if ev.Family == 4 {
		src = netip.AddrFrom4([4]byte(ev.Saddr[:4]))
		dst = netip.AddrFrom4([4]byte(ev.Daddr[:4]))
	} else {
		src = netip.AddrFrom16(ev.Saddr)
		dst = netip.AddrFrom16(ev.Daddr)
	}
	out.Src = netip.AddrPortFrom(src, ev.Sport)
	out.Dst = netip.AddrPortFrom(dst, ev.Dport)
	return out, nil
}

// RingFull returns the payloads lost so far because the ring was full.
func (d *DNS) RingFull() (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, ErrClosed
	}
	var per []uint64
	if err := d.objs.DnsDrops.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("DNS drops: %w", err)
	}
	return sumPerCPU(per), nil
}

// ProgramStats returns the run count and run time of each DNS program.
func (d *DNS) ProgramStats() ([]ProgramStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("program stats: %w", ErrClosed)
	}
	return programStats([]namedProgram{
		{"dns_egress", d.objs.DnsEgress},
		{"dns_ingress", d.objs.DnsIngress},
	})
}

// Close detaches the programs and unblocks ReadEvent; it is idempotent.
func (d *DNS) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.release()
}

func (d *DNS) release() error {
	var errs []error
	if d.reader != nil {
		errs = append(errs, d.reader.close())
	}
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}
