package probe

import (
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// kernelBTF is the kernel's BTF, decoded once for all the programs and
// feature probes of a start instead of once for each of them: cilium/ebpf
// decodes it afresh for every load given no cache, 22 times in a default
// start, which was most of the collector's start-up CPU (and under an
// emulated CPU, seconds of it). ReleaseKernelTypes lets it go once the
// programs are loaded.
var kernelBTF struct {
	sync.Mutex
	cache *btf.Cache
}

// kernelTypes returns the shared cache of the kernel's BTF.
func kernelTypes() *btf.Cache {
	kernelBTF.Lock()
	defer kernelBTF.Unlock()
	if kernelBTF.cache == nil {
		kernelBTF.cache = btf.NewCache()
	}
	return kernelBTF.cache
}

// ReleaseKernelTypes lets go of the decoded kernel BTF (a few MiB) once
// the programs are loaded; a later load decodes it again.
func ReleaseKernelTypes() {
	kernelBTF.Lock()
	kernelBTF.cache = nil
	kernelBTF.Unlock()
}

// loadOptions returns opts, or new options, with the shared kernel BTF.
func loadOptions(opts *ebpf.CollectionOptions) *ebpf.CollectionOptions {
	if opts == nil {
		opts = &ebpf.CollectionOptions{}
	}
	opts.Cache = kernelTypes()
	return opts
}
