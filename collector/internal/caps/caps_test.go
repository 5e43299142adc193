package caps

import (
	"slices"
	"testing"
)

func names(cs []Cap) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestRequired(t *testing.T) {
	tests := []struct {
		name string
		k    Kernel
		want []string
	}{
		{"6.8", Kernel{LastCap: 40, Major: 6, Minor: 8}, []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}},
		{"5.10 needs memlock", Kernel{LastCap: 40, Major: 5, Minor: 10}, []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE"}},
		{"5.10 memlock unlimited", Kernel{LastCap: 40, Major: 5, Minor: 10, MemlockUnlimited: true}, []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}},
		{"5.4 without CAP_BPF", Kernel{LastCap: 37, Major: 5, Minor: 4}, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(Required(tc.k)); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	need := Required(Kernel{LastCap: 40, Major: 6, Minor: 8})
	all := uint64(1)<<41 - 1
	if m := Missing(need, all); len(m) != 0 {
		t.Errorf("all held, missing %v", names(m))
	}
	eff := all &^ (1 << uint(Perfmon.Bit))
	if m := names(Missing(need, eff)); !slices.Equal(m, []string{"CAP_PERFMON"}) {
		t.Errorf("missing %v, want CAP_PERFMON", m)
	}
}

func TestParseRelease(t *testing.T) {
	for r, want := range map[string][2]int{"6.18.44-fc-v769": {6, 18}, "5.10.0-28-amd64": {5, 10}, "4.19": {4, 19}, "5.15rc1": {5, 15}, "x": {0, 0}} {
		if ma, mi := parseRelease(r); ma != want[0] || mi != want[1] {
			t.Errorf("%s: %d.%d, want %v", r, ma, mi, want)
		}
	}
}

func TestEffective(t *testing.T) {
	if _, err := Effective(); err != nil {
		t.Fatal(err)
	}
	if _, err := Running(); err != nil {
		t.Fatal(err)
	}
}
