package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Config is the reducer's whole configuration.
type Config struct {
	GRPCAddr        string
	HTTPAddr        string
	MaxMessageBytes int
	SeriesTTL       time.Duration
	SessionTTL      time.Duration
	MaxSeries       int
	Aggregation     aggregate.Level
	Loopback        bool
	JoinWindow      time.Duration
	MetadataWait    time.Duration
	Sharded         bool
	TLSCert         string
	TLSKey          string
	TLSCA           string
	Security        Security
	LogLevel        slog.Level
	Pprof           bool
	Consumers       Consumers // OTLP push and Observer API
	// GCPercent is the garbage collector's target (GOGC) when the
	// environment sets none; GCMinHeadroom the least headroom in bytes it
	// leaves a small heap (gcpace).
	GCPercent     int
	GCMinHeadroom uint64
	// GCIdleCollect runs a collection that returns the freed heap once
	// none ran for this long, or once the runtime keeps more than
	// GCMinHeadroom of free heap, at most once per period; 0: never
	// (gcpace).
	GCIdleCollect time.Duration
}

// defaultConfig returns the defaults of every setting.
func defaultConfig() Config {
	return Config{
		GRPCAddr:        "", // see Security.listenAddrs
		HTTPAddr:        "",
		MaxMessageBytes: 4 << 20,
		SeriesTTL:       5 * time.Minute,
		SessionTTL:      2 * time.Minute,
		MaxSeries:       10000,
		Loopback:        true,
		LogLevel:        slog.LevelInfo,
		Consumers:       defaultConsumers(),
		Security:        defaultSecurity(),
		GCPercent:       defaultGCPercent,
		GCMinHeadroom:   defaultGCMinHeadroom,
		GCIdleCollect:   defaultGCIdleCollect,
	}
}

// defaultGCPercent is the reducer's garbage collector target at fleet
// scale. Its heap is mostly long-lived socket and flow records that hold
// no pointer, which the collector does not scan, so a collection costs
// little, and Go's default of 100 (a heap twice the live one) doubles the
// memory a socket costs. At 1,000,000 sockets (BenchmarkFleet, a quiet
// machine), 25 took RSS per socket from 394-402 B at 50 to 327-332 B, with
// updates per core-second unchanged (552,000-554,000 at 50,
// 566,000-599,000 at 25). A small heap under connection churn, though,
// collected every few megabytes at 25 (+9-19% CPU), hence the floor of
// defaultGCMinHeadroom.
const defaultGCPercent = 25

// defaultGCMinHeadroom is the least the heap may grow over the live heap
// before a collection, whatever the percent: 25% of a 1,000,000-socket
// heap is about 50 MB, so the floor only lifts the target of small heaps.
const defaultGCMinHeadroom = 32 << 20

// defaultGCIdleCollect is how long the reducer lets its heap go without a
// collection. At 1,000,000 sockets in the steady state (BenchmarkFleet) a
// collection came about every 15 s, as the records are updated in place,
// and the heap held up to its target of garbage in between, more after a
// burst: the mean RSS per socket was 302-353 B without and 295-310 B with
// a collection after 5 s of quiet (five interleaved pairs), for two more
// collections per 15 s (updates per core-second 485,000 against 492,000,
// within the runs' spread). The same period bounds how long the runtime
// keeps the heap freed after a burst.
const defaultGCIdleCollect = 5 * time.Second

// bind declares the flags of c on fs.
func (c *Config) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "address of the gRPC server (ingest, metadata, observer); default 127.0.0.1:7000 in plaintext, :7000 with --tls-* or --insecure-listen")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "address of the HTTP server (/metrics, /healthz, /readyz, /api/v1/map); default 127.0.0.1:7010 in plaintext, :7010 with --tls-* or --insecure-listen")
	fs.IntVar(&c.MaxMessageBytes, "max-message-bytes", c.MaxMessageBytes, "largest gRPC message accepted from a collector")
	fs.DurationVar(&c.SeriesTTL, "series-ttl", c.SeriesTTL, "quiet edges with no active connection disappear after this")
	fs.DurationVar(&c.SessionTTL, "session-ttl", c.SessionTTL, "how long the sockets of a disconnected collector are kept")
	fs.IntVar(&c.MaxSeries, "max-series", c.MaxSeries, "edges (series per flow metric) kept at most; beyond it new edges fold into dst_workload=\"other\"")
	fs.TextVar(&c.Aggregation, "aggregation", c.Aggregation, "labels of the flow metrics: workload; node adds src_node/dst_node; pod adds src_pod/dst_pod as well; process: workload plus src_process/dst_process, the comm of the process owning each end's socket")
	fs.BoolVar(&c.Sharded, "sharded", c.Sharded, "this reducer is one of several behind one Service, each with the collectors of some nodes: a connection to a fleet address (a pod or node IP from the k8s-watcher, or a local address of a collector here) that no collector here reports counts what this reducer's end sends, so that a sum over the reducers counts each byte once")
	fs.DurationVar(&c.JoinWindow, "join-window", c.JoinWindow, "how long a flow to a fleet address waits for its peer's end before it counts as one-sided; 0 derives it from the collectors' report intervals and lag, a negative value counts every flow at once")
	fs.DurationVar(&c.MetadataWait, "metadata-wait", c.MetadataWait, "with a k8s-watcher: how long after start flows are held until its first snapshot, so that they are counted under their pods rather than container ids; 0 counts at once")
	fs.BoolVar(&c.Loopback, "loopback", c.Loopback, "show flows between two local processes over loopback addresses")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "server certificate (PEM); with --tls-key and --tls-ca enables mTLS")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "server private key (PEM)")
	fs.StringVar(&c.TLSCA, "tls-ca", c.TLSCA, "CA (PEM) that client certificates must chain to")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve Go's profiles under /debug/pprof/ on the HTTP address (e.g. /debug/pprof/heap?gc=1 runs a GC first, /debug/pprof/profile?seconds=30 profiles the CPU)")
	fs.IntVar(&c.GCPercent, "gc-percent", c.GCPercent, "garbage collector target: the heap grows this many percent over the live heap before a collection, or by --gc-min-headroom-bytes if that is more (the GOGC environment variable, when set, wins over both; GOMEMLIMIT sets a soft memory limit, e.g. a container's)")
	fs.Uint64Var(&c.GCMinHeadroom, "gc-min-headroom-bytes", c.GCMinHeadroom, "least growth of the heap over the live heap before a garbage collection, so that a small heap under connection churn is not collected every few megabytes; 0: --gc-percent alone")
	fs.DurationVar(&c.GCIdleCollect, "gc-idle-collect", c.GCIdleCollect, "at most this often, run a garbage collection that returns the heap it freed to the operating system: once none has run for this long (a heap that grows slowly would hold its garbage until it reaches its target), or once the runtime keeps more than --gc-min-headroom-bytes of free heap (after a burst); 0: never")
	c.Consumers.bind(fs)
	c.Security.bind(fs)
}

// Validate checks the configuration and names the first bad flag.
func (c *Config) Validate() error {
	c.GRPCAddr, c.HTTPAddr = c.Security.listenAddrs(c.GRPCAddr, c.HTTPAddr, c.tls())
	for _, a := range []struct{ flag, addr string }{{"--grpc-addr", c.GRPCAddr}, {"--http-addr", c.HTTPAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%s %q: %w", a.flag, a.addr, err)
		}
	}
	if c.GCIdleCollect < 0 {
		return fmt.Errorf("--gc-idle-collect %s: must not be negative", c.GCIdleCollect)
	}
	if c.GCPercent < 10 {
		return fmt.Errorf("--gc-percent %d: must be at least 10", c.GCPercent)
	}
	if c.MaxMessageBytes < 1024 {
		return fmt.Errorf("--max-message-bytes %d: must be at least 1024", c.MaxMessageBytes)
	}
	if c.SeriesTTL <= 0 {
		return fmt.Errorf("--series-ttl %s: must be positive", c.SeriesTTL)
	}
	if c.MaxSeries < 1 {
		return fmt.Errorf("--max-series %d: must be at least 1", c.MaxSeries)
	}
	if c.SessionTTL <= 0 {
		return fmt.Errorf("--session-ttl %s: must be positive", c.SessionTTL)
	}
	if c.MetadataWait < 0 {
		return fmt.Errorf("--metadata-wait %s: must not be negative", c.MetadataWait)
	}
	if c.Aggregation > aggregate.LevelProcess {
		return fmt.Errorf("--aggregation %d: want workload, node, pod or process", c.Aggregation)
	}
	if err := c.Consumers.validate(); err != nil {
		return err
	}
	set := 0
	for _, v := range []string{c.TLSCert, c.TLSKey, c.TLSCA} {
		if v != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		return errors.New("--tls-cert, --tls-key and --tls-ca: set all three for mTLS, or none for plaintext")
	}
	return c.Security.validate(c.GRPCAddr, c.HTTPAddr, c.tls())
}

// matchJoinWindow is the join window in the engine's terms: negative
// derives it, zero turns holding off.
func (c *Config) matchJoinWindow() time.Duration {
	switch {
	case c.JoinWindow == 0:
		return -1
	case c.JoinWindow < 0:
		return 0
	}
	return c.JoinWindow
}

// tls reports whether mTLS is configured.
func (c *Config) tls() bool { return c.TLSCert != "" }
