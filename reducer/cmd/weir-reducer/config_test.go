package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     string // in the error; "" when valid
		parseErr string // in the flag parse error
	}{
		{name: "defaults"},
		{name: "all flags", args: []string{"--grpc-addr", "127.0.0.1:7100", "--http-addr", ":7110", "--max-message-bytes", "1048576",
			"--series-ttl", "1m", "--session-ttl", "30s", "--max-series", "500", "--loopback=false", "--aggregation", "pod", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a", "--log-level", "debug"}},
		{name: "bad aggregation", args: []string{"--aggregation", "cluster"}, parseErr: "unknown aggregation level"},
		{name: "bad grpc address", args: []string{"--grpc-addr", "7000"}, want: "--grpc-addr"},
		{name: "bad http address", args: []string{"--http-addr", "localhost"}, want: "--http-addr"},
		{name: "tiny message limit", args: []string{"--max-message-bytes", "10"}, want: "--max-message-bytes"},
		{name: "gc percent too low", args: []string{"--gc-percent", "5"}, want: "--gc-percent"},
		{name: "negative idle collection period", args: []string{"--gc-idle-collect", "-1s"}, want: "--gc-idle-collect"},
		{name: "zero series ttl", args: []string{"--series-ttl", "0s"}, want: "--series-ttl"},
		{name: "negative session ttl", args: []string{"--session-ttl", "-1s"}, want: "--session-ttl"},
		{name: "negative metadata wait", args: []string{"--metadata-wait", "-1s"}, want: "--metadata-wait"},
		{name: "zero max series", args: []string{"--max-series", "0"}, want: "--max-series"},
		{name: "cert without key and ca", args: []string{"--tls-cert", "c"}, want: "--tls-cert, --tls-key and --tls-ca"},
		{name: "plaintext beyond loopback", args: []string{"--grpc-addr", ":7000"}, want: "--grpc-addr :7000: plaintext beyond loopback"},
		{name: "plaintext http beyond loopback", args: []string{"--http-addr", "0.0.0.0:7010"}, want: "--http-addr 0.0.0.0:7010"},
		{name: "insecure listen", args: []string{"--insecure-listen", "--grpc-addr", "0.0.0.0:7000"}},
		{name: "localhost", args: []string{"--grpc-addr", "localhost:7000", "--http-addr", "[::1]:7010"}},
		{name: "security flags", args: []string{"--trust-domain", "prod.example", "--hello-timeout", "5s", "--max-epoch-skew", "1m",
			"--max-session-sockets", "1000", "--max-session-processes", "100", "--max-conns", "10", "--max-conns-per-peer", "2",
			"--max-streams-per-peer", "3", "--handshake-timeout", "2s"}},
		{name: "bad trust domain", args: []string{"--trust-domain", "Prod/x"}, want: "--trust-domain"},
		{name: "negative cap", args: []string{"--max-session-sockets", "-1"}, want: "--max-session-sockets"},
		{name: "negative skew", args: []string{"--max-epoch-skew", "-1s"}, want: "--max-epoch-skew"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg.bind(fs)
			if err := fs.Parse(tc.args); err != nil || tc.parseErr != "" {
				if tc.parseErr == "" || err == nil || !strings.Contains(err.Error(), tc.parseErr) {
					t.Fatalf("parse: %v, want an error with %q", err, tc.parseErr)
				}
				return
			}
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %s", err, tc.want)
			}
		})
	}
	t.Run("parsed values", func(t *testing.T) {
		cfg := defaultConfig()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		cfg.bind(fs)
		if err := fs.Parse([]string{"--series-ttl", "90s", "--loopback=false"}); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		if cfg.SeriesTTL != 90*time.Second || cfg.Aggregation != aggregate.LevelWorkload || cfg.Loopback || cfg.SessionTTL != 2*time.Minute || cfg.GRPCAddr != "127.0.0.1:7000" || cfg.HTTPAddr != "127.0.0.1:7010" {
			t.Errorf("parsed %+v", cfg)
		}
	})
	// The default addresses: loopback in plaintext, every interface with
	// TLS or --insecure-listen.
	for _, tc := range []struct {
		args       []string
		grpc, http string
		insecure   bool
	}{
		{nil, "127.0.0.1:7000", "127.0.0.1:7010", false},
		{[]string{"--insecure-listen"}, ":7000", ":7010", true},
		{[]string{"--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a"}, ":7000", ":7010", false},
		{[]string{"--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a", "--insecure-listen"}, ":7000", ":7010", false},
	} {
		cfg := defaultConfig()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		cfg.bind(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.GRPCAddr != tc.grpc || cfg.HTTPAddr != tc.http || cfg.Security.insecure(cfg.tls()) != tc.insecure {
			t.Errorf("%v: addresses %s %s insecure %v, want %s %s %v", tc.args, cfg.GRPCAddr, cfg.HTTPAddr, cfg.Security.insecure(cfg.tls()), tc.grpc, tc.http, tc.insecure)
		}
	}
}
