package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"
)

// Config is the watcher's whole configuration.
type Config struct {
	Kubeconfig     string
	Reducer        string
	HTTPAddr       string
	Cluster        string
	Identity       string
	LeaderElect    bool
	LeaseName      string
	LeaseNamespace string
	LeaseDuration  time.Duration
	RenewDeadline  time.Duration
	RetryPeriod    time.Duration
	MaxTombstones  int
	Pprof          bool
	TLSCert        string
	TLSKey         string
	TLSCA          string
	LogLevel       slog.Level
}

// defaultConfig returns the defaults of every setting.
func defaultConfig() Config {
	host, _ := os.Hostname()
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "default"
	}
	return Config{
		Reducer:        "127.0.0.1:7000",
		HTTPAddr:       ":7012",
		Cluster:        "default",
		Identity:       host,
		LeaseName:      "weir-k8s-watcher",
		LeaseNamespace: ns,
		LeaseDuration:  15 * time.Second,
		RenewDeadline:  10 * time.Second,
		RetryPeriod:    2 * time.Second,
		MaxTombstones:  10000,
		LogLevel:       slog.LevelInfo,
	}
}

// bind declares the flags of c on fs.
func (c *Config) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig file; empty: the in-cluster configuration")
	fs.StringVar(&c.Reducer, "reducer", c.Reducer, "the reducer's gRPC address")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "address of the HTTP server (/metrics, /healthz)")
	fs.StringVar(&c.Cluster, "cluster", c.Cluster, "name of the cluster in the reducer's view")
	fs.StringVar(&c.Identity, "identity", c.Identity, "this replica's name, in the Hello and the Lease")
	fs.BoolVar(&c.LeaderElect, "leader-elect", c.LeaderElect, "run as one of several replicas: only the holder of the Lease streams")
	fs.StringVar(&c.LeaseName, "lease-name", c.LeaseName, "name of the Lease for --leader-elect")
	fs.StringVar(&c.LeaseNamespace, "lease-namespace", c.LeaseNamespace, "namespace of the Lease (default $POD_NAMESPACE, else default)")
	fs.DurationVar(&c.LeaseDuration, "lease-duration", c.LeaseDuration, "how long a Lease holds without renewal; a new leader takes over within it")
	fs.DurationVar(&c.RenewDeadline, "renew-deadline", c.RenewDeadline, "how long the leader retries renewing before it gives up")
	fs.DurationVar(&c.RetryPeriod, "retry-period", c.RetryPeriod, "time between attempts to acquire or renew the Lease")
	fs.IntVar(&c.MaxTombstones, "max-tombstones", c.MaxTombstones, "deletions remembered for resuming a stream; a reducer further behind gets a snapshot")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve /debug/pprof/ on the HTTP address (e.g. /debug/pprof/heap?gc=1 runs a GC first)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "client certificate (PEM) naming spiffe://<trust-domain>/k8s-watcher (weirctl certs writes one); with --tls-key and --tls-ca enables mTLS to the reducer")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "client private key (PEM)")
	fs.StringVar(&c.TLSCA, "tls-ca", c.TLSCA, "CA (PEM) that the reducer's certificate must chain to")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
}

// Validate checks the configuration and names the first bad flag.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("--http-addr %q: %w", c.HTTPAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.Reducer); err != nil {
		return fmt.Errorf("--reducer %q: %w", c.Reducer, err)
	}
	if c.Cluster == "" {
		return errors.New("--cluster: must not be empty")
	}
	if c.LeaderElect {
		if c.Identity == "" {
			return errors.New("--identity: must not be empty with --leader-elect")
		}
		if c.LeaseName == "" || c.LeaseNamespace == "" {
			return errors.New("--lease-name and --lease-namespace: must not be empty with --leader-elect")
		}
		if c.RenewDeadline >= c.LeaseDuration {
			return fmt.Errorf("--renew-deadline %s: must be shorter than --lease-duration %s", c.RenewDeadline, c.LeaseDuration)
		}
		if c.RetryPeriod <= 0 || c.RetryPeriod >= c.RenewDeadline {
			return fmt.Errorf("--retry-period %s: must be positive and shorter than --renew-deadline", c.RetryPeriod)
		}
	}
	if c.MaxTombstones < 1 {
		return fmt.Errorf("--max-tombstones %d: must be at least 1", c.MaxTombstones)
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
	return nil
}
