// Command weir-reducer receives the collectors' streams, joins the two ends
// of every TCP connection and serves the resulting dependency map as
// Prometheus metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/weir-project/weir/reducer/internal/gcpace"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/ingest"
	"github.com/weir-project/weir/reducer/internal/match"
	"github.com/weir-project/weir/reducer/internal/metadata"
	"github.com/weir-project/weir/reducer/internal/promexport"
	"github.com/weir-project/weir/reducer/internal/servicemap"
	"github.com/weir-project/weir/reducer/internal/web"
)

func main() {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("weir-reducer", flag.ContinueOnError)
	cfg.bind(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "weir-reducer:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cfg.GCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, cfg, logger)
	stop()
	if err != nil {
		logger.Error("exit", "error", err)
		os.Exit(1)
	}
}

// run wires the reducer's parts and runs them until ctx is done or one fails.
func run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	engine, err := match.New(match.Config{
		SeriesTTL:    cfg.SeriesTTL,
		MaxSeries:    cfg.MaxSeries,
		SessionTTL:   cfg.SessionTTL,
		Loopback:     cfg.Loopback,
		Level:        cfg.Aggregation,
		JoinWindow:   cfg.matchJoinWindow(),
		Sharded:      cfg.Sharded,
		MetadataWait: cfg.MetadataWait,
	}, reg, logger)
	if err != nil {
		return err
	}
	// The flow metrics bypass the registry: /metrics builds them directly,
	// fast at 100,000 edges.
	flows := promexport.New(engine, engine.Metrics(), engine.Level())
	ing, err := ingest.New(engine, reg, logger)
	if err != nil {
		return err
	}
	ing.SetAdmission(cfg.Security.Admission)
	obs, err := newObserver(cfg.Consumers, engine, reg, logger)
	if err != nil {
		return err
	}
	otlp, err := newOTLP(ctx, cfg.Consumers, engine, reg, logger)
	if err != nil {
		return err
	}
	gcfg, err := grpcConfig(cfg, reg, logger)
	if err != nil {
		return err
	}
	// One gRPC server for every service: ingest, metadata and the
	// observer.
	grpcSrv := grpcserver.New(gcfg, logger, ing.StatsHandler(), obs.StatsHandler())
	ing.Register(grpcSrv)
	obs.Register(grpcSrv)
	// Kubernetes metadata from a k8s-watcher names pods, services and
	// nodes.
	meta, err := metadata.New(metadata.NewCache(metadata.SinksOf(engine)), reg, logger)
	if err != nil {
		return err
	}
	meta.Register(grpcSrv)
	httpSrv := web.New(cfg.HTTPAddr, promexport.Gatherer{Base: reg, Flows: flows}, grpcSrv.Ready, logger)
	httpSrv.Handle("GET /api/v1/map", servicemap.New(engine))
	if cfg.Pprof {
		httpSrv.HandleProfiles()
	}

	if err := httpSrv.Start(ctx); err != nil {
		return err
	}
	if err := grpcSrv.Start(ctx); err != nil {
		shutdown(logger, httpSrv)
		return err
	}
	logger.Info("weir-reducer started", "grpc_addr", cfg.GRPCAddr, "http_addr", cfg.HTTPAddr, "loopback", cfg.Loopback, "aggregation", cfg.Aggregation)

	// The consumers: observer streams end before the gRPC server stops;
	// the OTLP push goes last, with one final export.
	parts := []stopper{ing, meta, obs, grpcSrv, httpSrv}
	_ = obs.Start(ctx)
	if otlp != nil {
		_ = otlp.Start(ctx)
		parts = append(parts, otlp)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return engine.Run(gctx) })
	if os.Getenv("GOGC") == "" {
		gcm := gcpace.Metrics{
			Percent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_reducer_gc_percent",
				Help: "The garbage collector's current target (GOGC): --gc-percent, or more for a heap too small to leave --gc-min-headroom-bytes."}),
			Forced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_reducer_gc_forced_collections_total",
				Help: "Garbage collections the reducer ran to return the freed heap to the operating system (--gc-idle-collect), by reason: idle (none had run for that long), free_heap (the runtime kept more than --gc-min-headroom-bytes of free heap)."},
				[]string{"reason"}),
		}
		reg.MustRegister(gcm.Percent, gcm.Forced)
		pacer := gcpace.Pacer{Percent: cfg.GCPercent, MinHeadroom: cfg.GCMinHeadroom, IdleCollect: cfg.GCIdleCollect}
		g.Go(func() error { pacer.Run(gctx, time.Second, gcm); return nil })
	}
	g.Go(func() error {
		select {
		case <-meta.Synced():
			engine.MetadataSynced()
		case <-gctx.Done():
		}
		return nil
	})
	g.Go(func() error { return waitErr(gctx, grpcSrv.Err()) })
	g.Go(func() error { return waitErr(gctx, httpSrv.Err()) })
	g.Go(func() error {
		<-gctx.Done()
		// Ingest ends its streams first, so that the server stops
		// gracefully.
		shutdown(logger, parts...)
		return nil
	})
	err = g.Wait()
	logger.Info("weir-reducer stopped")
	return err
}

// waitErr returns the first error of errc, or nil when ctx is done.
func waitErr(ctx context.Context, errc <-chan error) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

type stopper interface {
	Shutdown(ctx context.Context) error
}

// shutdown stops parts in order, giving them ten seconds in all.
func shutdown(logger *slog.Logger, parts ...stopper) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range parts {
		if err := p.Shutdown(ctx); err != nil {
			logger.Warn("shutdown", "error", err)
		}
	}
}
