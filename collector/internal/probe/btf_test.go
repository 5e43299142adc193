package probe

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestKernelTypesShared: every load shares one decoding of the kernel's
// BTF, options given or not, until ReleaseKernelTypes; a load after it
// decodes it again into a new cache.
func TestKernelTypesShared(t *testing.T) {
	t.Cleanup(ReleaseKernelTypes)
	c := kernelTypes()
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{}}
	if got := loadOptions(opts); got != opts || got.Cache != c || got.MapReplacements == nil {
		t.Fatalf("loadOptions(opts) = %+v, want opts with the shared cache %p", got, c)
	}
	if got := loadOptions(nil).Cache; got != c {
		t.Fatalf("loadOptions(nil).Cache = %p, want the shared cache %p", got, c)
	}
	ReleaseKernelTypes()
	if got := kernelTypes(); got == c || got == nil {
		t.Fatalf("after ReleaseKernelTypes the cache is %p, want a new one (the old was %p)", got, c)
	}
}
