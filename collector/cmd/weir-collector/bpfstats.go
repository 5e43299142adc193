package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/probe"
)

// programStatser is the probe's view of its programs' in-kernel cost.
type programStatser interface {
	ProgramStats() ([]probe.ProgramStats, error)
}

// bpfStats exports the run counts and run times of the probe's programs,
// read from the kernel at scrape time. Both stay 0 unless BPF run-time
// statistics are on (--bpf-stats, or the sysctl kernel.bpf_stats_enabled).
// The runs the kernel skipped, whose events are lost, are always counted.
type bpfStats struct {
	src     programStatser
	runs    *prometheus.Desc
	runTime *prometheus.Desc
	missed  *prometheus.Desc
	errors  prometheus.Counter
}

func newBPFStats(src programStatser) *bpfStats {
	return &bpfStats{
		src: src,
		runs: prometheus.NewDesc("weir_collector_bpf_runs_total",
			"Runs of each eBPF program of the probe since it was loaded; 0 unless BPF run-time statistics are enabled (--bpf-stats).",
			[]string{"program"}, nil),
		runTime: prometheus.NewDesc("weir_collector_bpf_run_seconds_total",
			"Time spent in each eBPF program of the probe since it was loaded; 0 unless BPF run-time statistics are enabled (--bpf-stats).",
			[]string{"program"}, nil),
		missed: prometheus.NewDesc("weir_collector_bpf_missed_runs_total",
			"Runs of each eBPF program of the probe that the kernel skipped because a BPF program was already running on that CPU; the events they would have reported are lost.",
			[]string{"program"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_bpf_stats_errors_total",
			Help: "Scrapes at which the eBPF programs' statistics could not be read.",
		}),
	}
}

func (b *bpfStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.runs
	ch <- b.runTime
	ch <- b.missed
	b.errors.Describe(ch)
}

func (b *bpfStats) Collect(ch chan<- prometheus.Metric) {
	stats, err := b.src.ProgramStats()
	if err != nil {
		// The rest of the scrape still goes out.
		b.errors.Inc()
	}
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(b.runs, prometheus.CounterValue, float64(s.Runs), s.Name)
		ch <- prometheus.MustNewConstMetric(b.runTime, prometheus.CounterValue, s.RunTime.Seconds(), s.Name)
		ch <- prometheus.MustNewConstMetric(b.missed, prometheus.CounterValue, float64(s.Missed), s.Name)
	}
	b.errors.Collect(ch)
}
