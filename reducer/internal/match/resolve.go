package match

import (
	"net/netip"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Workload kinds that this package resolves.
const (
	KindProcess  = "process"
	KindExternal = "external"
)

// unknownWorkload is the local end of a socket whose owner is not known.
var unknownWorkload = aggregate.Workload{Name: "unknown", Kind: KindProcess}

// processWorkload is the workload of a process: its comm.
func processWorkload(comm string) aggregate.Workload {
	if comm == "" {
		return unknownWorkload
	}
	return aggregate.Workload{Name: comm, Kind: KindProcess}
}

// localWorkload resolves the local end of a socket to its workload.
func localWorkload(s *socket) aggregate.Workload {
	if s.process == nil {
		return unknownWorkload
	}
	return s.process.workload
}

// remoteWorkload resolves an endpoint that no collector reports.
func remoteWorkload(addr netip.Addr) aggregate.Workload {
	return aggregate.Workload{Name: addr.String(), Kind: KindExternal}
}
