package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/weir-project/weir/collector/internal/cgroups"
	"github.com/weir-project/weir/collector/internal/dns"
	"github.com/weir-project/weir/collector/internal/encode"
	"github.com/weir-project/weir/collector/internal/nat"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/proc"
	"github.com/weir-project/weir/collector/internal/procs"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// TelemetryConfig configures the probes beside the TCP socket probe:
// processes, DNS and NAT.
type TelemetryConfig struct {
	Processes bool
	ProcProbe probe.ProcessConfig
	ProcTable procs.Config

	DNS      bool
	DNSProbe probe.DNSConfig
	DNSTrack dns.Config

	NAT      bool
	NATTable nat.Config
}

func defaultTelemetryConfig() TelemetryConfig {
	return TelemetryConfig{
		Processes: true,
		ProcProbe: probe.ProcessConfig{RingBytes: 1 << 18},
		ProcTable: procs.DefaultConfig(),
		// Off by default: the two cgroup_skb programs run on every packet of
		// the node, 39 ns each (bpf-ns in BenchmarkPrivilegedOverhead),
		// about 17 millicores of in-kernel time at 130k requests/s on two
		// cores: most of P2's budget of 20 on their own.
		DNS:      false,
		DNSProbe: probe.DNSConfig{RingBytes: 1 << 20},
		DNSTrack: dns.DefaultConfig(),
		NAT:      true,
		NATTable: nat.DefaultConfig(),
	}
}

func (c *TelemetryConfig) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.Processes, "processes", c.Processes, "follow process forks, execs and exits (sched tracepoints) for the process table: parent, executable, command line, container")
	fs.Func("process-ring-bytes", fmt.Sprintf("process event ring buffer size in `bytes`, a power of two and a multiple of the page size (default %d)", c.ProcProbe.RingBytes),
		intFlag(&c.ProcProbe.RingBytes, 32))
	fs.Func("max-processes", fmt.Sprintf("max `processes` in the process table; beyond, new ones are dropped and counted (default %d)", c.ProcTable.MaxProcesses),
		intFlag(&c.ProcTable.MaxProcesses, strconv.IntSize-1))
	fs.Func("max-cmdline", fmt.Sprintf("command lines are cut to this many `bytes` (default %d)", c.ProcTable.MaxCmdline),
		intFlag(&c.ProcTable.MaxCmdline, 20))
	fs.BoolVar(&c.DNS, "dns", c.DNS, "capture the DNS queries and answers of local clients (cgroup_skb on the cgroup-v2 root) for weir_dns_* and DNS names of external ends; costs about 40 ns of kernel time per packet in each direction, on every packet")
	fs.DurationVar(&c.DNSTrack.Timeout, "dns-timeout", c.DNSTrack.Timeout, "a DNS query without an answer after this long counts as a timeout")
	fs.Func("dns-ring-bytes", fmt.Sprintf("DNS payload ring buffer size in `bytes`, a power of two and a multiple of the page size; about 600 bytes a packet (default %d)", c.DNSProbe.RingBytes),
		intFlag(&c.DNSProbe.RingBytes, 32))
	fs.BoolVar(&c.NAT, "nat", c.NAT, "follow conntrack (netlink) in every network namespace and send each socket's NAT translation, so that a connection to a virtual IP joins its backend")
	fs.Func("nat-max-entries", fmt.Sprintf("max NAT `translations` kept; beyond, new ones are dropped and counted (default %d)", c.NATTable.MaxEntries),
		intFlag(&c.NATTable.MaxEntries, strconv.IntSize-1))
	fs.StringVar(&c.DNSProbe.CgroupRoot, "cgroup2-root", "", "cgroup-v2 mount that the DNS programs attach to (default: the first cgroup2 mount, e.g. /sys/fs/cgroup/unified on a hybrid host)")
}

// Validate reports the first bad setting, named by its flag.
func (c TelemetryConfig) Validate() error {
	if c.Processes {
		if err := c.ProcProbe.Validate(); err != nil {
			return err
		}
	}
	if c.DNS {
		if err := c.DNSProbe.Validate(); err != nil {
			return err
		}
		if err := c.DNSTrack.Validate(); err != nil {
			return err
		}
	}
	if c.NAT {
		if err := c.NATTable.Validate(); err != nil {
			return err
		}
	}
	return c.ProcTable.Validate()
}

// telemetry is the running part of TelemetryConfig.
type telemetry struct {
	procProbe *probe.Processes // nil when --processes=false
	procTable *procs.Table
	dnsProbe  *probe.DNS // nil when --dns=false
	dns       *dns.Tracker
	nat       *nat.Table // nil when --nat=false
	logger    *slog.Logger
}

// openTelemetry loads the probes the config asks for. On error, what was
// loaded is closed.
func openTelemetry(cfg TelemetryConfig, procRoot string, fs *proc.FS, reg prometheus.Registerer, logger *slog.Logger) (*telemetry, error) {
	t := &telemetry{logger: logger}
	table, err := procs.New(cfg.ProcTable, fs, reg)
	if err != nil {
		return nil, err
	}
	t.procTable = table
	root := cfg.DNSProbe.CgroupRoot
	if root == "" {
		root, _ = probe.CgroupV2Root()
	}
	if root != "" {
		// Names the cgroup of a process gone before /proc was read.
		table.SetCgroupIndex(cgroups.NewIndex(root))
	}
	if cfg.Processes {
		p, err := probe.OpenProcesses(cfg.ProcProbe)
		if err != nil {
			// Not fatal: the table reads a process from /proc when it
			// first owns a socket; only ancestry and short-lived
			// processes' inherited metadata are lost.
			logger.Warn("process probe unavailable; processes are read from /proc only", "error", err)
		} else {
			t.procProbe = p
		}
	}
	if cfg.DNS {
		tr, err := dns.New(cfg.DNSTrack, table, reg)
		if err != nil {
			t.Close()
			return nil, err
		}
		p, err := probe.OpenDNS(cfg.DNSProbe)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("DNS probe: %w", err)
		}
		t.dns, t.dnsProbe = tr, p
	}
	var rings []ringCounter
	if t.procProbe != nil {
		rings = append(rings, ringCounter{"weir_collector_process_ring_full_total", "Process events lost because the process ring buffer was full.", t.procProbe})
	}
	if t.dnsProbe != nil {
		rings = append(rings, ringCounter{"weir_collector_dns_ring_full_total", "DNS payloads lost because the DNS ring buffer was full.", t.dnsProbe})
	}
	if t.procProbe != nil {
		pp := t.procProbe
		if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_process_sync_failures_total",
			Help: "Reports that described new processes without waiting for the process events' reader to catch up (it took more than 250 ms): those processes may be described as they were before their last exec.",
		}, func() float64 { return float64(pp.SyncFailures()) })); err != nil {
			t.Close()
			return nil, fmt.Errorf("register process sync failures: %w", err)
		}
	}
	for _, c := range rings {
		if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, func() float64 {
			n, _ := c.ring.RingFull()
			return float64(n)
		})); err != nil {
			t.Close()
			return nil, fmt.Errorf("register %s: %w", c.name, err)
		}
	}
	if cfg.NAT {
		ncfg := cfg.NATTable
		ncfg.ProcRoot = procRoot
		nt, err := nat.New(ncfg, reg, logger)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.nat = nt
	}
	return t, nil
}

// ringCounter exports a probe's ring drops.
type ringCounter struct {
	name, help string
	ring       interface{ RingFull() (uint64, error) }
}

// run follows the probes until ctx is done.
func (t *telemetry) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-gctx.Done()
		return t.Close() // unblocks the readers
	})
	if t.procProbe != nil {
		g.Go(func() error { return t.procTable.Follow(gctx, t.procProbe) })
	}
	if t.dnsProbe != nil {
		g.Go(func() error { return t.dns.Follow(gctx, t.dnsProbe) })
	}
	if t.nat != nil {
		g.Go(func() error { return t.nat.Run(gctx) })
	}
	return g.Wait()
}

// Close releases the probes; it is idempotent.
func (t *telemetry) Close() error {
	var errs []error
	if t.procProbe != nil {
		errs = append(errs, t.procProbe.Close())
	}
	if t.dnsProbe != nil {
		errs = append(errs, t.dnsProbe.Close())
	}
	return errors.Join(errs...)
}

// ProgramStats returns the statistics of the programs of these probes.
func (t *telemetry) ProgramStats() ([]probe.ProgramStats, error) {
	var out []probe.ProgramStats
	if t.procProbe != nil {
		st, err := t.procProbe.ProgramStats()
		if err != nil {
			return nil, err
		}
		out = append(out, st...)
	}
	if t.dnsProbe != nil {
		st, err := t.dnsProbe.ProgramStats()
		if err != nil {
			return nil, err
		}
		out = append(out, st...)
	}
	return out, nil
}

// fill adds to a batch what these probes have for it: the DNS flows and
// answers of the interval, and their losses.
func (t *telemetry) fill(b *ingestv1.Batch) {
	if b.Loss == nil {
		b.Loss = &ingestv1.Loss{}
	}
	if t.procProbe != nil {
		if n, err := t.procProbe.RingFull(); err == nil {
			b.Loss.ProcessRingFull = n
		}
	}
	if t.nat != nil {
		b.Loss.ConntrackOverrun = t.nat.Overruns()
	}
	if t.dns != nil {
		b.DnsFlows, b.DnsAnswers, b.Loss.DnsParseErrors = t.dns.Drain()
		if n, err := t.dnsProbe.RingFull(); err == nil {
			b.Loss.DnsRingFull = n
		}
	}
}

// encoder returns the wire encoder of table, with the NAT translations
// when they are followed.
func (t *telemetry) encoder(table encode.Source) *encode.Encoder {
	e := encode.New(table, t.procTable)
	if t.procProbe != nil {
		e.SetProcessSync(t.procProbe)
	}
	if t.nat != nil {
		e.SetTranslator(t.nat)
	}
	return e
}

// reporter is the encoder with the telemetry's parts added to each batch.
type reporter struct {
	*encode.Encoder
	t *telemetry
}

// Report returns the encoder's batch (whose announcements the NAT table,
// synced by the encoder, translates) with the telemetry's parts.
func (r reporter) Report(now time.Time) *ingestv1.Batch {
	b := r.Encoder.Report(now)
	r.t.fill(b)
	return b
}

// allStats joins the program statistics of several probes.
type allStats []programStatser

func (a allStats) ProgramStats() ([]probe.ProgramStats, error) {
	var out []probe.ProgramStats
	var errs []error
	for _, s := range a {
		st, err := s.ProgramStats()
		errs = append(errs, err)
		out = append(out, st...)
	}
	return out, errors.Join(errs...)
}
