package harness

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func childNice(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("sh", "-c", "ps -o ni= -p $$").Output()
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPrivilegedNice(t *testing.T) {
	RequireRoot(t)
	before := childNice(t)
	t.Run("raised", func(t *testing.T) {
		Nice(t, -7)
		if got := childNice(t); got != -7 {
			t.Errorf("a child's niceness = %d, want -7", got)
		}
	})
	if got := childNice(t); got != before {
		t.Errorf("a child's niceness after the test = %d, want %d as before", got, before)
	}
}
