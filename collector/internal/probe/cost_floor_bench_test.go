package probe

import (
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkChurnFloor runs BenchmarkChurn's connections under three
// programs on sock:inet_sock_set_state, one at a time, and reports each
// one's in-kernel cost per run and per connection:
//
//   - weir: the collector's programs (BenchmarkChurn itself);
//   - minimal: bpf/cost_floor.c's floor_minimal, only the socket storage and
//     ring calls that a program reporting each socket's end with its owner
//     makes in this design, and nothing else (see OpenFloor);
//   - empty: floor_empty, the tracepoint's dispatch and run-time statistics
//     alone.
//
// minimal and empty bound from below what the collector's program can
// cost. The three run in turn in three rounds, ABC, CBA, ABC, so that a
// drift of the machine falls on all three alike (go test names the second
// and third runs of each weir#01, weir#02, …).
func BenchmarkChurnFloor(b *testing.B) {
	arms := []struct {
		name string
		run  func(*testing.B)
	}{
		{"weir", BenchmarkChurn},
		{"minimal", func(b *testing.B) { benchChurnFloor(b, true) }},
		{"empty", func(b *testing.B) { benchChurnFloor(b, false) }},
	}
	for round := range 3 {
		for i := range arms {
			a := arms[i]
			if round%2 == 1 {
				a = arms[len(arms)-1-i]
			}
			b.Run(a.name, a.run)
		}
	}
}

func benchChurnFloor(b *testing.B, minimal bool) {
	requirePrivileged(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	f, err := OpenFloor(minimal)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	// floor_minimal gives the listener storage for its children to copy,
	// as the collector's program does.
	ln := churnListener(b)
	before, err := f.Stats()
	if err != nil {
		b.Fatal(err)
	}
	conns := churnLoop(b, ln, nil)
	after, err := f.Stats()
	if err != nil {
		b.Fatal(err)
	}
	full, err := f.RingFull()
	if err != nil {
		b.Fatal(err)
	}
	if full != 0 {
		b.Fatalf("the floor's ring was full %d times: its figure would be too low", full)
	}
	runs := after.Runs - before.Runs
	ns := float64((after.RunTime - before.RunTime).Nanoseconds())
	b.ReportMetric(ns/float64(runs), "inet_sock_set_state-ns/run")
	b.ReportMetric(ns/float64(conns), "inet_sock_set_state-ns/conn")
	b.ReportMetric(float64(runs)/float64(conns), "inet_sock_set_state-runs/conn")
}
