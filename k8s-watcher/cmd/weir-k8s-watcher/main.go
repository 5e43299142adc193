// Command weir-k8s-watcher watches a Kubernetes API server's pods, owners,
// services and nodes and streams them to the reducer, which names flows by
// them.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/weir-project/weir/k8s-watcher/internal/stream"
	"github.com/weir-project/weir/k8s-watcher/internal/view"
	"github.com/weir-project/weir/k8s-watcher/internal/watch"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

func main() {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("weir-k8s-watcher", flag.ContinueOnError)
	cfg.bind(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "weir-k8s-watcher:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, cfg, logger)
	stop()
	if err != nil {
		logger.Error("exit", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "weir-k8s-watcher"
	restCfg.QPS, restCfg.Burst = 50, 100
	metaCfg := rest.CopyConfig(restCfg)
	restCfg.ContentType = "application/vnd.kubernetes.protobuf"
	restCfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	mc, err := metadata.NewForConfig(metaCfg)
	if err != nil {
		return fmt.Errorf("metadata client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var b [8]byte
	_, _ = rand.Read(b[:])
	epoch := binary.LittleEndian.Uint64(b[:]) | 1
	v := view.New(epoch, cfg.MaxTombstones)
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_watcher_events_total",
		Help: "Informer events, by object kind and operation."}, []string{"kind", "op"})
	leader := prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_watcher_leader",
		Help: "1 while this replica streams to the reducer (it holds the Lease, or runs without --leader-elect)."})
	synced := prometheus.NewGauge(prometheus.GaugeOpts{Name: "weir_watcher_synced",
		Help: "1 once every informer has listed its objects."})
	listErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weir_watcher_list_watch_errors_total",
		Help: "Failed lists and watches of the API server, by object kind (e.g. forbidden: a missing permission; the informer retries)."}, []string{"kind"})
	reg.MustRegister(events, listErrors, leader, synced, viewCollector{v})
	w, err := watch.New(cs, mc, v, logger, func(kind, op string) { events.WithLabelValues(kind, op).Inc() },
		func(kind string) { listErrors.WithLabelValues(kind).Inc() })
	if err != nil {
		return err
	}
	scfg := stream.Config{Addr: cfg.Reducer, Cluster: cfg.Cluster, Watcher: cfg.Identity}
	if cfg.TLSCert != "" {
		if scfg.TLS, err = clientTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA); err != nil {
			return fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
		}
	}
	sender, err := stream.New(scfg, v, reg, logger)
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
	}
	lis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w", cfg.HTTPAddr, err)
	}
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	logger.Info("weir-k8s-watcher started", "http_addr", lis.Addr().String(), "reducer", cfg.Reducer,
		"cluster", cfg.Cluster, "leader_elect", cfg.LeaderElect, "identity", cfg.Identity)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return httpSrv.Shutdown(sctx)
	})
	syncedc := make(chan struct{})
	g.Go(func() error { return w.Run(gctx, func() { synced.Set(1); close(syncedc) }) })
	g.Go(func() error {
		// Stream only a complete view: a snapshot of half-listed
		// informers would make the reducer drop what it knows.
		select {
		case <-gctx.Done():
			return nil
		case <-syncedc:
		}
		streamFn := func(ctx context.Context) error {
			leader.Set(1)
			defer leader.Set(0)
			return sender.Run(ctx)
		}
		if !cfg.LeaderElect {
			return streamFn(gctx)
		}
		return elect(gctx, cfg, cs, logger, streamFn)
	})
	err = g.Wait()
	logger.Info("weir-k8s-watcher stopped")
	return err
}

// elect runs fn while this replica holds the Lease. A replica that loses
// the Lease (it could not renew it, e.g. while the API server was away)
// stops streaming and campaigns again: its informers keep its view current
// meanwhile, so when it leads again it resumes where the reducer is, or
// sends a snapshot if another replica streamed in between.
func elect(ctx context.Context, cfg Config, cs kubernetes.Interface, logger *slog.Logger, fn func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: cfg.LeaseName, Namespace: cfg.LeaseNamespace},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	logger = logger.With("component", "leader")
	for {
		if err := campaign(ctx, cfg, lock, logger, fn); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.RetryPeriod):
		}
	}
}

// campaign runs one leader election: it returns when this replica stops
// leading, or fails.
func campaign(ctx context.Context, cfg Config, lock resourcelock.Interface, logger *slog.Logger, fn func(context.Context) error) error {
	errc := make(chan error, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("leading", "lease", cfg.LeaseNamespace+"/"+cfg.LeaseName)
				if err := fn(ctx); err != nil {
					errc <- err
				}
			},
			OnStoppedLeading: func() { logger.Info("stopped leading; campaigning again") },
			OnNewLeader: func(id string) {
				if id != cfg.Identity {
					logger.Info("following", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(ctx)
	select {
	case err := <-errc:
		return err
	default:
	}
	return nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (or set --kubeconfig): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

func clientTLS(cert, key, ca string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", ca)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// viewCollector exports the view's counters at scrape time.
type viewCollector struct{ v *view.View }

var (
	objectsDesc = prometheus.NewDesc("weir_watcher_objects", "Objects in the view, by kind.", []string{"kind"}, nil)
	versionDesc = prometheus.NewDesc("weir_watcher_version", "The view's version: the number of changes so far.", nil, nil)
	tombDesc    = prometheus.NewDesc("weir_watcher_tombstones", "Deletions remembered for resuming streams.", nil, nil)
	coalDesc    = prometheus.NewDesc("weir_watcher_changes_coalesced_total", "Changes replaced by a later change of the same object before the stream sent them.", nil, nil)
	tdropDesc   = prometheus.NewDesc("weir_watcher_tombstones_dropped_total", "Deletions forgotten to bound memory; a stream behind them gets a snapshot.", nil, nil)
)

func (viewCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{objectsDesc, versionDesc, tombDesc, coalDesc, tdropDesc} {
		ch <- d
	}
}

func (c viewCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.v.Stats()
	for _, k := range []metadatav1.ObjectKind{metadatav1.ObjectKind_OBJECT_KIND_POD, metadatav1.ObjectKind_OBJECT_KIND_SERVICE, metadatav1.ObjectKind_OBJECT_KIND_NODE} {
		name := strings.ToLower(strings.TrimPrefix(k.String(), "OBJECT_KIND_"))
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(s.Objects[k]), name)
	}
	ch <- prometheus.MustNewConstMetric(versionDesc, prometheus.GaugeValue, float64(s.Version))
	ch <- prometheus.MustNewConstMetric(tombDesc, prometheus.GaugeValue, float64(s.Tombstones))
	ch <- prometheus.MustNewConstMetric(coalDesc, prometheus.CounterValue, float64(s.Coalesced))
	ch <- prometheus.MustNewConstMetric(tdropDesc, prometheus.CounterValue, float64(s.TombstonesDropped))
}
