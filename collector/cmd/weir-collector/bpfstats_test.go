package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weir-project/weir/collector/internal/probe"
)

type fakeProgramStats struct {
	stats []probe.ProgramStats
	err   error
}

func (f fakeProgramStats) ProgramStats() ([]probe.ProgramStats, error) { return f.stats, f.err }

func TestBPFStats(t *testing.T) {
	tests := []struct {
		name string
		src  fakeProgramStats
		want string
	}{
		{
			name: "two programs",
			src: fakeProgramStats{stats: []probe.ProgramStats{
				{Name: "inet_sock_set_state", Runs: 1200, RunTime: 3 * time.Millisecond, Missed: 2},
				{Name: "sock_send_length", Runs: 45000, RunTime: 1500 * time.Millisecond},
			}},
			want: `
# HELP weir_collector_bpf_missed_runs_total Runs of each eBPF program of the probe that the kernel skipped because a BPF program was already running on that CPU; the events they would have reported are lost.
# TYPE weir_collector_bpf_missed_runs_total counter
weir_collector_bpf_missed_runs_total{program="inet_sock_set_state"} 2
weir_collector_bpf_missed_runs_total{program="sock_send_length"} 0
# HELP weir_collector_bpf_run_seconds_total Time spent in each eBPF program of the probe since it was loaded; 0 unless BPF run-time statistics are enabled (--bpf-stats).
# TYPE weir_collector_bpf_run_seconds_total counter
weir_collector_bpf_run_seconds_total{program="inet_sock_set_state"} 0.003
weir_collector_bpf_run_seconds_total{program="sock_send_length"} 1.5
# HELP weir_collector_bpf_runs_total Runs of each eBPF program of the probe since it was loaded; 0 unless BPF run-time statistics are enabled (--bpf-stats).
# TYPE weir_collector_bpf_runs_total counter
weir_collector_bpf_runs_total{program="inet_sock_set_state"} 1200
weir_collector_bpf_runs_total{program="sock_send_length"} 45000
# HELP weir_collector_bpf_stats_errors_total Scrapes at which the eBPF programs' statistics could not be read.
# TYPE weir_collector_bpf_stats_errors_total counter
weir_collector_bpf_stats_errors_total 0
`,
		},
		{
			name: "unreadable",
			src:  fakeProgramStats{err: errors.New("program info: bad file descriptor")},
			want: `
# HELP weir_collector_bpf_stats_errors_total Scrapes at which the eBPF programs' statistics could not be read.
# TYPE weir_collector_bpf_stats_errors_total counter
weir_collector_bpf_stats_errors_total 1
`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newBPFStats(tc.src)
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c)
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tc.want)); err != nil {
				t.Fatal(err)
			}
			if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
				t.Fatalf("lint: %v %v", problems, err)
			}
		})
	}
}
