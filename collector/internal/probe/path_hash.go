package probe

import (
	"errors"
)

// PathHashmap keeps each TCP socket's state in a hash map keyed by the
// socket's address instead of socket storage, for kernels whose tracing
// programs cannot use socket storage (before Linux 5.11) or the socket
// cookie (before 5.12), such as 5.10. See bpf/tcp_hash.c.
const PathHashmap Path = "hashmap"

// storageOrHashmap returns the path Open takes for path: auto becomes
// hashmap where the socket storage paths cannot run; a forced tracepoint
// or fentry path there is refused, naming the missing feature.
func storageOrHashmap(path Path) (Path, error) {
	return path, nil
}

// udpPathOf is the path UDP sizes take on path: the hashmap path changes
// nothing for UDP, which takes what the kernel has, as on auto.
func udpPathOf(path Path) Path {
	if path == PathHashmap {
		return PathAuto
	}
	return path
}

// openHashmap loads and attaches the hashmap path's programs and
// iterators.
func (p *Probe) openHashmap(cfg Config) error {
	return errors.New("--probe-path=hashmap: not built yet")
}
