// Command weir-collector watches the node's TCP sockets through eBPF and
// streams their counter deltas to the weir reducer.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/weir-project/weir/collector/internal/admin"
	"github.com/weir-project/weir/collector/internal/caps"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/proc"
	"github.com/weir-project/weir/collector/internal/sockets"
	"github.com/weir-project/weir/collector/internal/stream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the collector: it returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2 // parseFlags printed the error
	}
	if cfg.Version {
		fmt.Fprintln(stdout, "weir-collector", version)
		return 0
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "weir-collector: %v\n", err)
		return 2
	}
	level, _ := cfg.level()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	for _, name := range cfg.Deprecated {
		logger.Warn("deprecated flag", "flag", "--"+name, "use", "--max-sockets")
	}

	// Least privilege: the capabilities of caps.Required, and no more
	// (see the README's security section). A missing one is named here
	// rather than left to an EPERM from the kernel.
	if err := caps.Check(); err != nil {
		fmt.Fprintf(stderr, "weir-collector: %v\n", err)
		return 1
	}
	if !caps.Has(caps.SysAdmin) {
		logger.Info("running without CAP_SYS_ADMIN: other network namespaces cannot be entered (setns), so their sockets open before start are found from processes' open files (not those still in an accept queue) and their conntrack is not read")
	}
	if err := probe.Check(); err != nil {
		msg := unsupportedMessage(err)
		if p := cfg.Probe.Path; p != "" && p != probe.PathAuto {
			// A forced path is refused by the kernel before it is tried.
			msg = fmt.Sprintf("--probe-path=%s: %s", p, msg)
		}
		fmt.Fprintf(stderr, "weir-collector: %s\n", msg)
		return 1
	}
	p, err := probe.Open(cfg.Probe)
	if err != nil {
		fmt.Fprintf(stderr, "weir-collector: load the eBPF probe: %v\n", err)
		return 1
	}
	defer p.Close()
	logProbePath(logger, cfg.Probe.Path, p)

	if err := serve(ctx, cfg, p, logger); err != nil {
		logger.Error("collector failed", "error", err)
		return 1
	}
	return 0
}

// serve wires the fixed pipeline (probe events → socket table → encoder →
// stream, plus the HTTP endpoints) and runs it until ctx is done.
func serve(ctx context.Context, cfg Config, p *probe.Probe, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	if err := registerRuntime(reg); err != nil {
		return err
	}
	procs, err := proc.New(cfg.ProcRoot)
	if err != nil {
		return err
	}
	tel, err := openTelemetry(cfg.Telemetry, cfg.ProcRoot, procs, reg, logger)
	if err != nil {
		return err
	}
	defer tel.Close()
	if err := reg.Register(newBPFStats(allStats{p, tel})); err != nil {
		return fmt.Errorf("register eBPF program metrics: %w", err)
	}
	if err := registerProbeDrops(reg, p); err != nil {
		return err
	}
	if err := registerFeatures(reg, p); err != nil {
		return err
	}
	tcfg := sockets.DefaultConfig()
	tcfg.BufferBytes = cfg.BufferBytes
	tcfg.MaxSockets = cfg.MaxSockets
	tcfg.Owners = procs
	tcfg.NoRTT = cfg.NoRTT
	if tcfg.NetNS, err = netnsInodes(cfg.NetNS); err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	if p.UDPEnabled() {
		if tcfg.UDP, err = sockets.NewUDP(cfg.MaxUDPFlows, reg); err != nil {
			return fmt.Errorf("UDP table: %w", err)
		}
	}
	table, err := sockets.New(tcfg, reg)
	if err != nil {
		return fmt.Errorf("socket table: %w", err)
	}
	client, err := stream.New(stream.Config{
		Addr:             cfg.Reducer,
		Interval:         cfg.Interval,
		TLSCert:          cfg.TLSCert,
		TLSKey:           cfg.TLSKey,
		TLSCA:            cfg.TLSCA,
		InitialBackoff:   stream.DefaultInitialBackoff,
		MaxBackoff:       stream.DefaultMaxBackoff,
		MaxBatchBytes:    cfg.MaxBatchBytes,
		AckTimeout:       cfg.AckTimeout,
		AckEvery:         cfg.AckEvery,
		NodeName:         cfg.NodeName,
		BootID:           bootID(cfg.ProcRoot),
		CollectorVersion: version,
		KernelRelease:    kernelRelease(),
	}, table, reporter{tel.encoder(table), tel}, p, reg, logger)
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	httpServer := admin.New(reg, logger)
	if cfg.Pprof {
		httpServer.HandleProfiles()
	}
	// Bound before anything runs: a taken port fails the start, and
	// /metrics answers before the first hello reaches the reducer.
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", cfg.HTTPAddr, err)
	}

	logger.Info("collector starting", "version", version, "node_name", cfg.NodeName, "reducer", cfg.Reducer,
		"http_addr", cfg.HTTPAddr, "max_sockets", cfg.MaxSockets, "ring_bytes", cfg.Probe.RingBytes,
		"sample_ring_bytes", cfg.Probe.SampleRingBytes, "udp", cfg.Probe.UDP.Enabled, "udp_peers", cfg.Probe.UDP.Peers,
		"buffer_bytes", cfg.BufferBytes, "proc_root", cfg.ProcRoot, "bpf_stats", cfg.Probe.Stats, "netns", cfg.NetNS)
	defer logger.Info("collector stopped")

	// The sockets open before the probe was loaded, before following those
	// opened since.
	start := time.Now()
	if err := table.Discover(p); err != nil {
		logger.Warn("discovery of existing sockets incomplete", "error", err)
	}
	logger.Info("existing sockets discovered", "sockets", table.Live(), "duration", time.Since(start).Round(time.Millisecond))
	// Every program is loaded: the decoded kernel BTF they shared can go.
	probe.ReleaseKernelTypes()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// Closing the probe unblocks the event reader.
		<-gctx.Done()
		return p.Close()
	})
	g.Go(func() error { return table.Follow(p) })
	if tcfg.UDP != nil {
		g.Go(func() error { return tcfg.UDP.Follow(p) })
	}
	g.Go(func() error { return tel.run(gctx) })
	g.Go(func() error { return client.Run(gctx) })
	g.Go(func() error { return httpServer.Serve(gctx, httpLn) })
	return g.Wait()
}

// registerProbeDrops exports the probe's counters that the stream does not
// send in-band: chunked walks and UDP datagrams of unknown remote.
func registerProbeDrops(reg prometheus.Registerer, p *probe.Probe) error {
	drop := func(f func(probe.Drops) uint64) func() float64 {
		return func() float64 {
			d, err := p.Drops()
			if err != nil {
				return 0
			}
			return float64(f(d))
		}
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_sample_fallbacks_total",
			Help: "Samples written through the iterator's seq_file because the sample ring was full (TCP and UDP): the walk was chunked.",
		}, drop(func(d probe.Drops) uint64 { return d.SampleFallbacks + d.UDPSampleFallbacks })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_udp_unattributed_total",
			Help: "UDP datagrams of unconnected sockets whose remote was not known (the thread changed CPU within the call); counted under other peers.",
		}, drop(func(d probe.Drops) uint64 { return d.UDPUnattributed })),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register probe metrics: %w", err)
		}
	}
	return nil
}

func registerRuntime(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register runtime metrics: %w", err)
		}
	}
	return nil
}

// unsupportedMessage explains a failed feature probe to the user.
func unsupportedMessage(err error) string {
	if !errors.Is(err, probe.ErrNotSupported) {
		return fmt.Sprintf("feature probe: %v", err)
	}
	feature := strings.TrimSuffix(err.Error(), ": "+probe.ErrNotSupported.Error())
	return fmt.Sprintf("%s: not supported by this kernel", feature)
}

// logProbePath logs in one line the path the probe took and what it
// delivers, and each signal this kernel and path cannot give, once, by name.
func logProbePath(logger *slog.Logger, asked probe.Path, p *probe.Probe) {
	if asked == "" {
		asked = probe.PathAuto
	}
	attrs := []any{"asked", string(asked), "path", string(p.Path()), "samples", p.SampleWalks()}
	for _, f := range p.Features() {
		attrs = append(attrs, f.Name, f.Enabled)
	}
	logger.Info("probe path chosen", attrs...)
	for _, f := range p.Features() {
		if !f.Enabled {
			logger.Warn("signal not collected", "feature", f.Name, "reason", f.Reason)
		}
	}
}

// registerFeatures exports weir_collector_feature_enabled{feature}.
func registerFeatures(reg prometheus.Registerer, p *probe.Probe) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weir_collector_feature_enabled",
		Help: "1 when the collector delivers this signal on this kernel and probe path, 0 when not (off by flag, or the kernel cannot give it; logged at start with the reason).",
	}, []string{"feature"})
	for _, f := range p.Features() {
		v := 0.0
		if f.Enabled {
			v = 1
		}
		g.WithLabelValues(f.Name).Set(v)
	}
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("register feature metric: %w", err)
	}
	return nil
}

func bootID(procRoot string) string {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys/kernel/random/boot_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
