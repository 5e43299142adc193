package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/match"
	"github.com/weir-project/weir/reducer/internal/observer"
	"github.com/weir-project/weir/reducer/internal/otlpexport"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// reducerVersion is the version, or the module version of a go install.
func reducerVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// Consumers is the configuration of the OTLP push and the Observer API.
type Consumers struct {
	OTLP           otlpexport.Config
	OTLPHeaders    headers
	MaxObservers   int
	ObserverRing   int
	ObserverLinger time.Duration
}

func defaultConsumers() Consumers {
	obs := observer.DefaultConfig()
	return Consumers{OTLP: otlpexport.DefaultConfig(), MaxObservers: obs.MaxStreams, ObserverRing: obs.RingSize, ObserverLinger: obs.Linger}
}

// bind declares the flags of c on fs.
func (c *Consumers) bind(fs *flag.FlagSet) {
	o := &c.OTLP
	fs.StringVar(&o.Endpoint, "otlp-endpoint", o.Endpoint, "OTLP/gRPC endpoint (host:port) to push the flow metrics to; empty: no push")
	fs.DurationVar(&o.Interval, "otlp-interval", o.Interval, "how often the flow metrics are pushed")
	fs.TextVar(&o.Temporality, "otlp-temporality", o.Temporality, "temporality of the pushed counters: cumulative or delta")
	fs.BoolVar(&o.Insecure, "otlp-insecure", o.Insecure, "push in plaintext (otherwise TLS, verified against --otlp-tls-ca or the system roots)")
	fs.StringVar(&o.TLSCA, "otlp-tls-ca", o.TLSCA, "CA (PEM) that the OTLP endpoint's certificate must chain to")
	fs.StringVar(&o.TLSCert, "otlp-tls-cert", o.TLSCert, "client certificate (PEM) for the OTLP endpoint, with --otlp-tls-key")
	fs.StringVar(&o.TLSKey, "otlp-tls-key", o.TLSKey, "client private key (PEM) for the OTLP endpoint")
	fs.Var(&c.OTLPHeaders, "otlp-header", "header k=v sent with every push, e.g. authorization=Bearer… (repeatable)")
	fs.StringVar(&o.Compression, "otlp-compression", o.Compression, "compression of the pushes: gzip or none")
	fs.DurationVar(&o.Timeout, "otlp-timeout", o.Timeout, "time limit of one push, retries with backoff included")
	fs.IntVar(&o.QueueSize, "otlp-queue-size", o.QueueSize, "snapshots waiting to be pushed at most; beyond, the oldest is dropped and counted")
	fs.IntVar(&c.MaxObservers, "max-observers", c.MaxObservers, "concurrent Observer API streams (weirctl observe, WatchServiceMap) at most")
	fs.IntVar(&c.ObserverRing, "observer-ring", c.ObserverRing, "recent flow events kept for weirctl observe --since/--last")
	fs.DurationVar(&c.ObserverLinger, "observer-linger", c.ObserverLinger, "keep following flow events this long after the last weirctl observe --follow ends, for --since/--last; negative: always (following costs ingest CPU)")
}

// validate checks c and names the bad flag.
func (c *Consumers) validate() error {
	c.OTLP.Headers = c.OTLPHeaders.m
	if err := c.OTLP.Validate(); err != nil {
		return err
	}
	if c.MaxObservers < 0 {
		return fmt.Errorf("--max-observers %d: must not be negative", c.MaxObservers)
	}
	if c.ObserverRing < 0 {
		return fmt.Errorf("--observer-ring %d: must not be negative", c.ObserverRing)
	}
	return nil
}

// headers is the repeatable --otlp-header k=v flag.
type headers struct{ m map[string]string }

func (h *headers) String() string {
	if h == nil || len(h.m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(h.m))
	for k := range h.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",") // the values may be secrets
}

func (h *headers) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(k) == "" {
		return errors.New("want key=value")
	}
	if h.m == nil {
		h.m = make(map[string]string)
	}
	h.m[strings.ToLower(strings.TrimSpace(k))] = v
	return nil
}

// newObserver returns the Observer API of engine.
func newObserver(c Consumers, engine *match.Engine, reg *prometheus.Registry, logger *slog.Logger) (*observer.Observer, error) {
	cfg := observer.DefaultConfig()
	cfg.MaxStreams, cfg.RingSize, cfg.Linger, cfg.Version = c.MaxObservers, c.ObserverRing, c.ObserverLinger, reducerVersion()
	return observer.New(cfg, engine, reg, reg, logger)
}

// newOTLP returns the OTLP exporter of engine, or nil when no endpoint is set.
func newOTLP(ctx context.Context, c Consumers, engine *match.Engine, reg prometheus.Registerer, logger *slog.Logger) (*otlpexport.Exporter, error) {
	if c.OTLP.Endpoint == "" {
		return nil, nil
	}
	cfg := c.OTLP
	cfg.Version = reducerVersion()
	client, err := otlpexport.NewClient(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return otlpexport.New(cfg, engine, client, reg, logger)
}
