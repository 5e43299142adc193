package harness

import (
	"os"
	"testing"
	"time"
)

func TestCPUSeconds(t *testing.T) {
	// A shell that burns CPU for a while must show it; one that sleeps must not.
	busy := Start(t, "busy", "sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30")
	idle := Start(t, "idle", "sleep", "30")
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := busy.CPUSeconds()
		if err != nil {
			t.Fatal(err)
		}
		if b >= 0.05 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("busy shell used %v s of CPU after 20 s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	i, err := idle.CPUSeconds()
	if err != nil {
		t.Fatal(err)
	}
	if i > 0.05 {
		t.Errorf("sleep used %v s of CPU", i)
	}
	if _, err := cpuSeconds(os.Getpid() + 1<<22); err == nil {
		t.Error("no error for a pid that cannot exist")
	}
}
