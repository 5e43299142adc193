package probe

import (
	"syscall"
	"testing"
	"time"
)

// BenchmarkOpen is a start of the default programs: Check, Open and Close,
// from a kernel BTF not yet decoded (ReleaseKernelTypes before each). It
// reports the process CPU of one start as cpu-ns/op, beside its wall time.
func BenchmarkOpen(b *testing.B) {
	requirePrivileged(b)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before := cpu()
	for b.Loop() {
		ReleaseKernelTypes()
		if err := Check(); err != nil {
			b.Fatal(err)
		}
		p, err := Open(DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu()-before)/float64(b.N), "cpu-ns/op")
	ReleaseKernelTypes()
}
