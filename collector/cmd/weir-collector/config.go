package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/stream"
)

// Config is everything the collector is configured with.
type Config struct {
	Reducer     string
	Interval    time.Duration
	NodeName    string
	HTTPAddr    string
	Probe       probe.Config
	MaxSockets  int
	MaxUDPFlows int
	NoRTT       bool
	BufferBytes int64
	// MaxBatchBytes bounds one batch message (--max-batch-bytes).
	MaxBatchBytes int
	// AckTimeout ends a session whose reducer stopped acknowledging
	// (--ack-timeout); zero: five intervals, at least 30 s.
	AckTimeout time.Duration
	// AckEvery: one report in this many asks the reducer for an ack
	// (--ack-every).
	AckEvery int
	ProcRoot string
	// NetNS are the network namespace files whose sockets are tracked
	// (--netns); empty: every namespace.
	NetNS    []string
	TLSCert  string
	TLSKey   string
	TLSCA    string
	LogLevel string
	Version  bool
	// Pprof serves Go's profiles on the HTTP address (--pprof).
	Pprof bool

	// Telemetry is the processes, DNS and NAT part (telemetry.go).
	Telemetry TelemetryConfig

	// Deprecated are the deprecated flags given, to warn about once the
	// logger exists.
	Deprecated []string
}

// defaultConfig returns the collector's defaults.
func defaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Reducer:       "127.0.0.1:7000",
		Interval:      5 * time.Second,
		NodeName:      host,
		HTTPAddr:      "127.0.0.1:7011",
		Probe:         probe.DefaultConfig(),
		MaxSockets:    65536,
		MaxUDPFlows:   65536,
		BufferBytes:   8 << 20,
		MaxBatchBytes: stream.DefaultMaxBatchBytes,
		ProcRoot:      "/proc",
		LogLevel:      "info",
		Telemetry:     defaultTelemetryConfig(),
	}
}

// parseFlags reads the command line over the defaults; usage and flag
// errors go to output. Integer flags take plain decimal integers: no
// exponent, no unit suffix, no base prefix.
func parseFlags(args []string, output io.Writer) (Config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("weir-collector", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage of weir-collector:")
		fs.PrintDefaults()
		fmt.Fprintln(fs.Output(), "\nInteger flags take plain decimal integers: no exponent, unit suffix, sign or base prefix.")
	}
	fs.StringVar(&cfg.Reducer, "reducer", cfg.Reducer, "reducer gRPC address, host:port")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "report interval")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "name of this node; the default is the hostname")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "address of /metrics and /healthz")
	fs.Func("max-sockets", fmt.Sprintf("max live `sockets` tracked; sockets beyond are refused and counted (default %d)", cfg.MaxSockets),
		intFlag(&cfg.MaxSockets, strconv.IntSize-1))
	fs.Func("socket-map-entries", "deprecated alias of --max-sockets: max live `sockets` tracked", func(s string) error {
		cfg.Deprecated = append(cfg.Deprecated, "socket-map-entries")
		return intFlag(&cfg.MaxSockets, strconv.IntSize-1)(s)
	})
	fs.Func("ring-bytes", fmt.Sprintf("kernel event ring buffer size in `bytes`, a power of two and a multiple of the page size (default %d)", cfg.Probe.RingBytes),
		intFlag(&cfg.Probe.RingBytes, 32))
	fs.Func("buffer-bytes", fmt.Sprintf("memory cap in `bytes` for closed sockets awaiting report while the reducer is unreachable (default %d)", cfg.BufferBytes),
		intFlag(&cfg.BufferBytes, 63))
	fs.Func("max-batch-bytes", fmt.Sprintf("largest batch message in `bytes`; a larger report (after an outage) goes out as several batches. Keep it below the reducer's --max-message-bytes (default %d)", cfg.MaxBatchBytes),
		intFlag(&cfg.MaxBatchBytes, 31))
	fs.DurationVar(&cfg.AckTimeout, "ack-timeout", cfg.AckTimeout, "end the stream and connect again when the reducer acknowledged nothing for this long while batches were outstanding (a reducer gone without closing the connection); 0: five intervals, at least 30s")
	fs.IntVar(&cfg.AckEvery, "ack-every", cfg.AckEvery, fmt.Sprintf("ask the reducer to acknowledge one report in this many (and the first of each session); an ack covers the reports before it. 1: every report. This many intervals and one more must fit in the ack timeout; 0: %d, or 1 where that does not fit", stream.DefaultAckEvery))
	fs.StringVar(&cfg.ProcRoot, "proc-root", cfg.ProcRoot, "where the host's /proc is mounted (e.g. /host/proc in a pod)")
	fs.Func("netns", "track only the sockets of these network namespaces: comma-separated `paths` of namespace files (/run/netns/x, /proc/PID/ns/net), resolved at start; sockets of others are ignored and counted in weir_collector_netns_ignored_total (default: every namespace)", func(s string) error {
		for _, p := range strings.Split(s, ",") {
			if p == "" {
				return errors.New("empty path")
			}
			cfg.NetNS = append(cfg.NetNS, p)
		}
		return nil
	})
	fs.Func("sample-ring-bytes", fmt.Sprintf("kernel memory in `bytes` for the samples of one poll, 144 bytes per live socket; a power of two of at least the page size (default %d)", cfg.Probe.SampleRingBytes),
		intFlag(&cfg.Probe.SampleRingBytes, 32))
	fs.BoolFunc("tcp-rtt", "send each active TCP socket's smoothed RTT every interval, for weir_tcp_rtt_seconds (default true; about 1 byte per socket update on the wire)", func(v string) error {
		on, err := strconv.ParseBool(v)
		cfg.NoRTT = !on
		return err
	})
	fs.BoolVar(&cfg.Probe.UDP.Enabled, "udp", cfg.Probe.UDP.Enabled, "count UDP per socket and remote address (cgroup sendmsg/recvmsg/bind/sock_release hooks on the cgroup-v2 root, the UDP drop tracepoint, and the send/receive tracepoints of Linux 6.3, which run for every TCP message too: about 40-50 ns of kernel time per send and per receive, hence off by default)")
	fs.Func("probe-path", "how the kernel is hooked where there is a choice: `auto` (BTF tracepoints where the kernel has them, else fentry/fexit; hashmap where tracing programs have no socket storage, before Linux 5.12), tracepoint, fentry, hashmap (per-socket state in a hash map, from BTF tracepoints), or kprobe (refused: kprobe programs cannot use socket storage); the choice is logged at start (default auto)", func(s string) error {
		p, err := probe.ParsePath(s)
		cfg.Probe.Path = p
		return err
	})
	fs.Func("udp-peers", fmt.Sprintf("remote `addresses` a UDP socket is reported with, at most %d; the rest is folded into other peers and counted (default %d)", probe.MaxUDPPeers, cfg.Probe.UDP.Peers),
		intFlag(&cfg.Probe.UDP.Peers, 32))
	fs.Func("max-udp-flows", fmt.Sprintf("max UDP socket and remote pairs tracked; pairs beyond are counted and not reported (default %d)", cfg.MaxUDPFlows),
		intFlag(&cfg.MaxUDPFlows, strconv.IntSize-1))
	fs.BoolVar(&cfg.Probe.Stats, "bpf-stats", cfg.Probe.Stats, "enable the kernel's BPF run-time statistics while running, for weir_collector_bpf_* (costs a clock read per program run)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "client certificate for mTLS to the reducer")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "client key for mTLS to the reducer")
	fs.StringVar(&cfg.TLSCA, "tls-ca", "", "CA that verifies the reducer's certificate")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve Go's profiles under /debug/pprof/ on the HTTP address (e.g. /debug/pprof/profile?seconds=30 profiles the CPU)")
	fs.BoolVar(&cfg.Version, "version", false, "print the version and exit")
	cfg.Telemetry.flags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	cfg.Probe.ProcRoot = cfg.ProcRoot
	cfg.Probe.NetNS = cfg.NetNS
	cfg.Probe.UDP.CgroupRoot = cfg.Telemetry.DNSProbe.CgroupRoot
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintln(output, err)
		return Config{}, err
	}
	return cfg, nil
}

// intFlag parses a plain non-negative decimal integer of at most bits bits
// into dst. strconv rejects what fmt.Sscan would cut short ("1e3", "4096k").
func intFlag[T ~int | ~int64 | ~uint32](dst *T, bits int) func(string) error {
	return func(s string) error {
		v, err := strconv.ParseUint(s, 10, bits)
		if err != nil {
			var nerr *strconv.NumError
			if errors.As(err, &nerr) && errors.Is(nerr.Err, strconv.ErrRange) {
				return fmt.Errorf("out of range (at most %d)", uint64(1)<<bits-1)
			}
			return errors.New("not a plain decimal integer (no exponent, unit suffix or sign)")
		}
		*dst = T(v)
		return nil
	}
}

// Validate reports the first bad setting, named by its flag.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Reducer); err != nil {
		return fmt.Errorf("--reducer: %w", err)
	}
	if c.Interval < 100*time.Millisecond {
		return fmt.Errorf("--interval: %s is below 100ms", c.Interval)
	}
	if c.NodeName == "" {
		return errors.New("--node-name: empty, and the hostname is unknown")
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	if err := c.Probe.Validate(); err != nil {
		return err
	}
	if c.Probe.UDP.Enabled && c.MaxUDPFlows <= 0 {
		return errors.New("--max-udp-flows: must be positive")
	}
	if c.MaxSockets <= 0 {
		name := "--max-sockets"
		if slices.Contains(c.Deprecated, "socket-map-entries") {
			name = "--socket-map-entries"
		}
		return fmt.Errorf("%s: %d is not positive", name, c.MaxSockets)
	}
	if c.MaxBatchBytes < 64<<10 {
		return fmt.Errorf("--max-batch-bytes: %d is below 65536", c.MaxBatchBytes)
	}
	if c.AckTimeout < 0 {
		return fmt.Errorf("--ack-timeout: %s is negative", c.AckTimeout)
	}
	if c.AckEvery < 0 {
		return fmt.Errorf("--ack-every: %d is negative", c.AckEvery)
	}
	if timeout := cmp.Or(c.AckTimeout, stream.DefaultAckTimeout(c.Interval)); c.AckEvery > 0 && !stream.AcksFit(c.AckEvery, c.Interval, timeout) {
		return fmt.Errorf("--ack-every: %d reports of %s and one more do not fit in the ack timeout %s", c.AckEvery, c.Interval, timeout)
	}
	if c.BufferBytes <= 0 {
		return fmt.Errorf("--buffer-bytes: %d is not positive", c.BufferBytes)
	}
	if st, err := os.Stat(c.ProcRoot); err != nil {
		return fmt.Errorf("--proc-root: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("--proc-root: %s is not a directory", c.ProcRoot)
	}
	if _, err := netnsInodes(c.NetNS); err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	set := 0
	for _, f := range []string{c.TLSCert, c.TLSKey, c.TLSCA} {
		if f != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		return errors.New("--tls-cert, --tls-key, --tls-ca: give all three for mTLS, or none")
	}
	if _, err := c.level(); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	return c.Telemetry.Validate()
}

func (c Config) level() (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}

// netnsInodes resolves network namespace files to the inodes the probe
// reports sockets with; nil for none.
func netnsInodes(paths []string) (map[uint32]struct{}, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	set := make(map[uint32]struct{}, len(paths))
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
		var st unix.Stat_t
		if err == nil {
			err = unix.Fstat(fd, &st)
		}
		unix.Close(fd)
		if err != nil || typ != unix.CLONE_NEWNET {
			return nil, fmt.Errorf("%s is not a network namespace", p)
		}
		set[uint32(st.Ino)] = struct{}{}
	}
	return set, nil
}
