package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/reducer/internal/otlpexport"
)

func TestConsumersConfig(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the error; "" when valid
	}{
		{name: "otlp", args: []string{"--otlp-endpoint", "otel:4317", "--otlp-insecure", "--otlp-interval", "10s",
			"--otlp-temporality", "delta", "--otlp-header", "authorization=Bearer x", "--otlp-header", "x-tenant=a=b"}},
		{name: "otlp tls", args: []string{"--otlp-endpoint", "otel:4317", "--otlp-tls-ca", "ca.pem", "--otlp-tls-cert", "c.pem", "--otlp-tls-key", "k.pem"}},
		{name: "observer", args: []string{"--max-observers", "4", "--observer-ring", "100", "--observer-linger", "-1s"}},
		{name: "bad endpoint", args: []string{"--otlp-endpoint", "http://otel:4317/v1"}, want: "--otlp-endpoint"},
		{name: "insecure and tls", args: []string{"--otlp-endpoint", "otel:4317", "--otlp-insecure", "--otlp-tls-ca", "ca.pem"}, want: "--otlp-insecure"},
		{name: "tiny interval", args: []string{"--otlp-endpoint", "otel:4317", "--otlp-interval", "1ms"}, want: "--otlp-interval"},
		{name: "negative observers", args: []string{"--max-observers", "-1"}, want: "--max-observers"},
		{name: "negative ring", args: []string{"--observer-ring", "-1"}, want: "--observer-ring"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg.bind(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
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
	t.Run("parse errors", func(t *testing.T) {
		for _, args := range [][]string{{"--otlp-header", "novalue"}, {"--otlp-temporality", "gauge"}} {
			cfg := defaultConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg.bind(fs)
			if err := fs.Parse(args); err == nil {
				t.Errorf("%v accepted", args)
			}
		}
	})
	t.Run("parsed values", func(t *testing.T) {
		cfg := defaultConfig()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		cfg.bind(fs)
		if err := fs.Parse([]string{"--otlp-endpoint", "otel:4317", "--otlp-insecure", "--otlp-temporality", "delta",
			"--otlp-header", "Authorization=Bearer x"}); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		o := cfg.Consumers.OTLP
		if o.Endpoint != "otel:4317" || !o.Insecure || o.Temporality != otlpexport.TemporalityDelta ||
			o.Headers["authorization"] != "Bearer x" || o.Interval != 30*time.Second {
			t.Errorf("parsed %+v", o)
		}
		if cfg.Consumers.MaxObservers != 16 || cfg.Consumers.ObserverLinger != 5*time.Minute {
			t.Errorf("observer defaults %+v", cfg.Consumers)
		}
	})
}
