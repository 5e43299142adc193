package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// A guest console as the benchmark prints it (lines shortened).
const benchConsole = `[    1.0] boot
WEIR-GUEST kernel 6.1.0-50-cloud-amd64 amd64
WEIR-GUEST begin setup modules
WEIR-GUEST end setup modules exit=0 seconds=0.2
WEIR-GUEST begin fentry overhead
BenchmarkPrivilegedOverhead
    overhead_test.go:323: keepalive pairs, req/s with/without=ratio (load CPU per request without/with=ratio, reducer CPU with/without); 1790/5256=0.341 (CPU 356359/899435 ns=0.396, reducer 77/30 mc); 6751/5990=1.127 (CPU 303345/259966 ns=1.167, reducer 44/42 mc); 6432/6270=1.026 (CPU 294253/274295 ns=1.073, reducer 34/30 mc)
    overhead_test.go:324: churn pairs, req/s with/without=ratio (load CPU per request without/with=ratio, reducer CPU with/without); 602/203=2.969 (CPU 7664008/2493223 ns=3.074, reducer 84/59 mc); 482/446=1.081 (CPU 3739928/3013777 ns=1.241, reducer 90/40 mc)
BenchmarkPrivilegedOverhead-2   	       1	124667214140 ns/op	         0.6991 churn-ratio	         0 collector-dropped	         1.026 ratio
WEIR-GUEST end fentry overhead exit=0 seconds=212.2
WEIR-GUEST begin hashmap overhead
BenchmarkPrivilegedOverhead
--- FAIL: BenchmarkPrivilegedOverhead
WEIR-GUEST end hashmap overhead exit=1 seconds=53.4
WEIR-GUEST done
`

func TestParseBench(t *testing.T) {
	results, done, bootErr := parseBench(strings.NewReader(benchConsole), filepath.Join(t.TempDir(), "console.log"), false)
	if !done || bootErr != "" {
		t.Fatalf("done %v, boot error %q", done, bootErr)
	}
	if len(results) != 3 {
		t.Fatalf("%d runs, want 3 (setup, fentry, hashmap)", len(results))
	}
	setup, fentry, hashmap := results[0], results[1], results[2]
	if setup.path != "setup" || !setup.ended || setup.exit != 0 {
		t.Errorf("setup: %+v", setup)
	}
	if fentry.path != "fentry" || !fentry.ended || fentry.exit != 0 {
		t.Errorf("fentry: %+v", fentry)
	}
	if got := fentry.pairs["keepalive"]; len(got) != 3 || got[0] != 0.341 || got[2] != 1.026 {
		t.Errorf("fentry keepalive pairs %v", got)
	}
	if got := fentry.without["keepalive"]; len(got) != 3 || got[0] != 5256 {
		t.Errorf("fentry keepalive rates without %v", got)
	}
	if got := fentry.pairs["churn"]; len(got) != 2 || got[1] != 1.081 {
		t.Errorf("fentry churn pairs %v", got)
	}
	if fentry.metrics["ratio"] != "1.026" || fentry.metrics["churn-ratio"] != "0.6991" || fentry.metrics["collector-dropped"] != "0" {
		t.Errorf("fentry metrics %v", fentry.metrics)
	}
	if hashmap.exit != 1 || len(hashmap.pairs["keepalive"]) != 0 || hashmap.metrics["ratio"] != "" {
		t.Errorf("hashmap: %+v", hashmap)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median %v, want 2.5", m)
	}
}
