package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/weir-project/weir/collector/internal/probe"
)

// Config is everything the collector is configured with.
type Config struct {
	Reducer     string
	Interval    time.Duration
	NodeName    string
	HTTPAddr    string
	Probe       probe.Config
	BufferBytes int64
	TLSCert     string
	TLSKey      string
	TLSCA       string
	LogLevel    string
	Version     bool
}

// defaultConfig returns the collector's defaults.
func defaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Reducer:     "127.0.0.1:7000",
		Interval:    5 * time.Second,
		NodeName:    host,
		HTTPAddr:    "127.0.0.1:7011",
		Probe:       probe.DefaultConfig(),
		BufferBytes: 8 << 20,
		LogLevel:    "info",
	}
}

// parseFlags reads the command line over the defaults; usage and flag
// errors go to output.
func parseFlags(args []string, output io.Writer) (Config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("weir-collector", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&cfg.Reducer, "reducer", cfg.Reducer, "reducer gRPC address, host:port")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "report interval")
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "name of this node (default: the hostname)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "address of /metrics and /healthz")
	fs.Func("socket-map-entries", fmt.Sprintf("max sockets tracked in the kernel (default %d)", cfg.Probe.SocketMapEntries), uintFlag(&cfg.Probe.SocketMapEntries))
	fs.Func("ring-bytes", fmt.Sprintf("kernel event ring buffer size in bytes, a power of two (default %d)", cfg.Probe.RingBytes), uintFlag(&cfg.Probe.RingBytes))
	fs.Int64Var(&cfg.BufferBytes, "buffer-bytes", cfg.BufferBytes, "memory cap for closed sockets awaiting report while the reducer is unreachable")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "client certificate for mTLS to the reducer")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "client key for mTLS to the reducer")
	fs.StringVar(&cfg.TLSCA, "tls-ca", "", "CA that verifies the reducer's certificate")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&cfg.Version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintln(output, err)
		return Config{}, err
	}
	return cfg, nil
}

func uintFlag(dst *uint32) func(string) error {
	return func(s string) error {
		var v uint32
		if _, err := fmt.Sscan(s, &v); err != nil {
			return errors.New("not an unsigned 32-bit integer")
		}
		*dst = v
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
	if c.BufferBytes <= 0 {
		return fmt.Errorf("--buffer-bytes: %d is not positive", c.BufferBytes)
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
	return nil
}

func (c Config) level() (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}
