package harness

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestPrivilegedProgramsOf loads a program in this process, runs it through
// BPF_PROG_TEST_RUN with the run-time statistics on, and finds it, with its
// runs, among the programs this process holds.
func TestPrivilegedProgramsOf(t *testing.T) {
	RequireRoot(t)
	EnableBPFStats(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "weir_stats_test", Type: ebpf.SocketFilter, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	before, err := ProgramsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	const runs = 1000
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: runs}); err != nil {
		t.Fatal(err)
	}
	after, err := ProgramsOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	d, ok := Sub(after, before)["weir_stats_test"]
	if !ok {
		t.Fatalf("the program is not among this process's: %+v", after)
	}
	if d.RunCount != runs || d.RunTime <= 0 || d.Iter {
		t.Errorf("delta = %+v, want %d runs, some run time, not an iterator", d, runs)
	}
}
