package probe

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 udpHash ../../../bpf/udp_hash.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// udpHashObjs is what openUDPHash loads of bpf/udp_hash.c: the UDP
// programs for kernels whose tracing programs have no socket storage (the
// hashmap path's kernels, such as 5.10). Each UDP socket's state is in a
// hash map keyed by the socket's address; sizes are hooked with fexit.
type udpHashObjs struct {
	UdpEvents  *ebpf.Map     `ebpf:"udp_events"`
	UdpSamples *ebpf.Map     `ebpf:"udp_samples"`
	UdpHash    *ebpf.Map     `ebpf:"udp_hash"`
	SlotClaims *ebpf.Map     `ebpf:"udp_slot_claims"`
	IdCounters *ebpf.Map     `ebpf:"udp_id_counters"`
	Zero       *ebpf.Map     `ebpf:"udp_zero"`
	Stashes    *ebpf.Map     `ebpf:"stashes"`
	Sendmsg4   *ebpf.Program `ebpf:"udph_sendmsg4"`
	Sendmsg6   *ebpf.Program `ebpf:"udph_sendmsg6"`
	Recvmsg4   *ebpf.Program `ebpf:"udph_recvmsg4"`
	Recvmsg6   *ebpf.Program `ebpf:"udph_recvmsg6"`
	Release    *ebpf.Program `ebpf:"udph_release"`
	FailQueue  *ebpf.Program `ebpf:"udph_fail_queue_rcv_skb"`
	Sample     *ebpf.Program `ebpf:"udph_sample"`
	sizes      []namedProgram
}

func (o *udpHashObjs) programs() []namedProgram {
	return append([]namedProgram{
		{udpHashProgUdphSendmsg4, o.Sendmsg4},
		{udpHashProgUdphSendmsg6, o.Sendmsg6},
		{udpHashProgUdphRecvmsg4, o.Recvmsg4},
		{udpHashProgUdphRecvmsg6, o.Recvmsg6},
		{udpHashProgUdphRelease, o.Release},
		{udpHashProgUdphFailQueueRcvSkb, o.FailQueue},
		{udpHashProgUdphSample, o.Sample},
	}, o.sizes...)
}

func (o *udpHashObjs) Close() error {
	var errs []error
	for _, prog := range o.programs() {
		errs = append(errs, prog.prog.Close())
	}
	for _, m := range []*ebpf.Map{o.UdpEvents, o.UdpSamples, o.UdpHash, o.SlotClaims, o.IdCounters, o.Zero, o.Stashes} {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// openUDPHash loads and attaches bpf/udp_hash.c; on failure nothing is
// left loaded. Its sizes are fexit programs: a kernel without BPF
// trampolines (arm64 before 6.0) or that does not permit them refuses it.
func (p *Probe) openUDPHash(cfg UDPConfig) (err error) {
	root := cfg.CgroupRoot
	if root == "" {
		if root, err = CgroupV2Root(); err != nil {
			return err
		}
	}
	spec, err := loadUdpHash()
	if err != nil {
		return err
	}
	spec.Maps[udpHashMapUdpEvents].MaxEntries = cfg.RingBytes
	spec.Maps[udpHashMapUdpSamples].MaxEntries = cfg.SampleRingBytes
	for _, v := range []struct {
		name  string
		value any
	}{
		{udpHashVarPeerCap, cfg.Peers},
		{udpHashVarUdpWakeupBytes, uint64(cfg.RingBytes / 4)},
	} {
		if err := spec.Variables[v.name].Set(v.value); err != nil {
			return fmt.Errorf("set %s: %w", v.name, err)
		}
	}
	// udp.h declares udp.c's socket storage too; nothing here uses it, so
	// it is not created.
	delete(spec.Maps, udpHashMapUdpStates)
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		udpHashMapDrops:    p.objs.Drops,
		udpHashMapSkStates: p.objs.SkStates,
	}}
	u := &udpProbe{}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.close())
		}
	}()
	type sends struct {
		SendmsgX  *ebpf.Program `ebpf:"udph_sendmsg"`
		Sendmsg6X *ebpf.Program `ebpf:"udph_v6_sendmsg"`
	}
	// udp_recvmsg lost its noblock argument in Linux 5.19: the variant
	// whose return slot matches the kernel's BTF.
	var o udpHashObjs
	if kernelArgs("udp_recvmsg") == 6 {
		var l struct {
			udpHashObjs
			sends
			Recvmsg  *ebpf.Program `ebpf:"udph_recvmsg_noblock"`
			Recvmsg6 *ebpf.Program `ebpf:"udph_v6_recvmsg_noblock"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(opts)); err != nil {
			return fentryError(loadError("UDP programs (hashmap path)", err))
		}
		o = l.udpHashObjs
		o.sizes = []namedProgram{{udpHashProgUdphSendmsg, l.SendmsgX}, {udpHashProgUdphV6Sendmsg, l.Sendmsg6X},
			{udpHashProgUdphRecvmsgNoblock, l.Recvmsg}, {udpHashProgUdphV6RecvmsgNoblock, l.Recvmsg6}}
	} else {
		var l struct {
			udpHashObjs
			sends
			Recvmsg  *ebpf.Program `ebpf:"udph_recvmsg"`
			Recvmsg6 *ebpf.Program `ebpf:"udph_v6_recvmsg"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(opts)); err != nil {
			return fentryError(loadError("UDP programs (hashmap path)", err))
		}
		o = l.udpHashObjs
		o.sizes = []namedProgram{{udpHashProgUdphSendmsg, l.SendmsgX}, {udpHashProgUdphV6Sendmsg, l.Sendmsg6X},
			{udpHashProgUdphRecvmsg, l.Recvmsg}, {udpHashProgUdphV6Recvmsg, l.Recvmsg6}}
	}
	u.hash = &o
	tracing := append([]namedProgram{
		{udpHashProgUdphRelease, o.Release}, {udpHashProgUdphFailQueueRcvSkb, o.FailQueue}}, o.sizes...)
	for _, tp := range tracing {
		l, err := link.AttachTracing(link.TracingOptions{Program: tp.prog})
		if err != nil {
			return fmt.Errorf("attach %s: %w", spec.Programs[tp.name].SectionName, fentryError(err))
		}
		u.links = append(u.links, l)
	}
	for _, c := range []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"cgroup/sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, o.Sendmsg4},
		{"cgroup/sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, o.Sendmsg6},
		{"cgroup/recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, o.Recvmsg4},
		{"cgroup/recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, o.Recvmsg6},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: c.attach, Program: c.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", c.name, root, err)
		}
		u.links = append(u.links, l)
	}
	u.sampler, err = link.AttachIter(link.IterOptions{Program: o.Sample, Map: o.UdpHash})
	if err != nil {
		return fmt.Errorf("attach iter/bpf_map_elem (udp): %w", err)
	}
	u.reader, err = newPollReader(o.UdpEvents)
	if err != nil {
		return fmt.Errorf("open UDP ring buffer: %w", err)
	}
	u.samples, err = newSampleRing(o.UdpSamples)
	if err != nil {
		return err
	}
	p.udp = u
	return nil
}
