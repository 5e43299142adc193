package main

import (
	"flag"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		err  string // a substring of the error; empty: valid
	}{
		{"defaults", nil, ""},
		{"leader election", []string{"--leader-elect", "--identity", "a"}, ""},
		{"bad http address", []string{"--http-addr", "7012"}, "--http-addr"},
		{"bad reducer", []string{"--reducer", "reducer"}, "--reducer"},
		{"empty cluster", []string{"--cluster", ""}, "--cluster"},
		{"renew not shorter than the lease", []string{"--leader-elect", "--identity", "a", "--renew-deadline", "15s"}, "--renew-deadline"},
		{"retry not shorter than renew", []string{"--leader-elect", "--identity", "a", "--retry-period", "10s"}, "--retry-period"},
		{"no identity", []string{"--leader-elect", "--identity", ""}, "--identity"},
		{"no tombstones", []string{"--max-tombstones", "0"}, "--max-tombstones"},
		{"half of tls", []string{"--tls-cert", "c.pem"}, "--tls-cert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			cfg.bind(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one naming %s", err, tc.err)
			}
		})
	}
}
