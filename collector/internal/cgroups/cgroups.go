// Package cgroups tells from a process's cgroup paths which container and
// which Kubernetes pod it runs in, for the path shapes of docker,
// containerd, cri-o and podman under the cgroupfs and systemd drivers, on
// cgroup v1, v2 and hybrid hosts. No runtime socket is needed.
package cgroups

import (
	"strings"
)

// Runtime is the container runtime a cgroup path shape belongs to.
type Runtime string

// Runtimes told apart by their path shapes; RuntimeUnknown is a container id
// without a runtime prefix (e.g. a bare id under a pod's cgroup).
const (
	RuntimeUnknown    Runtime = ""
	RuntimeDocker     Runtime = "docker"
	RuntimeContainerd Runtime = "containerd"
	RuntimeCRIO       Runtime = "cri-o"
	RuntimePodman     Runtime = "podman"
)

// Container is what a cgroup path tells of its process.
type Container struct {
	// ID is the container id, 64 lower-case hex digits; empty outside a
	// container.
	ID      string
	Runtime Runtime
	// PodUID is the Kubernetes pod UID (with dashes); empty outside a pod.
	PodUID string
}

// ShortID returns the first 12 digits of the id, as docker ps shows it.
func (c Container) ShortID() string {
	if len(c.ID) > 12 {
		return c.ID[:12]
	}
	return c.ID
}

// prefixes are the runtime prefixes of a container's cgroup directory name,
// longest first where one is a prefix of another.
var prefixes = []struct {
	prefix string
	rt     Runtime
}{
	{"cri-containerd-", RuntimeContainerd},
	{"containerd-", RuntimeContainerd},
	{"docker-", RuntimeDocker},
	{"crio-", RuntimeCRIO},
	{"libpod-", RuntimePodman},
}

// Parse reads one cgroup path, e.g.
// /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope.
// The container is the deepest directory that names one; a conmon
// (libpod-conmon-<id>, crio-conmon-<id>) is not a container.
func Parse(path string) Container {
	var c Container
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		seg := parts[i]
		if c.ID == "" {
			if id, rt, ok := containerSegment(seg); ok {
				c.ID, c.Runtime = id, rt
				if rt == RuntimeUnknown && i > 0 {
					c.Runtime = parentRuntime(parts[i-1])
				}
				continue
			}
		}
		if c.PodUID == "" {
			if uid, ok := podSegment(seg); ok {
				c.PodUID = uid
			}
		}
	}
	return c
}

// ParseAll reads the cgroup paths of one process (the lines of
// /proc/PID/cgroup, the unified one first) and returns the first that
// names a container, else the first that names a pod. On a hybrid host a
// runtime may place a process in the v1 hierarchies only, so every line is
// looked at.
func ParseAll(paths []string) Container {
	var pod Container
	for _, p := range paths {
		c := Parse(p)
		if c.ID != "" {
			return c
		}
		if pod.PodUID == "" && c.PodUID != "" {
			pod = c
		}
	}
	return pod
}

func containerSegment(seg string) (string, Runtime, bool) {
	name := strings.TrimSuffix(seg, ".scope")
	if strings.Contains(name, "conmon-") {
		return "", "", false
	}
	for _, p := range prefixes {
		if id, ok := strings.CutPrefix(name, p.prefix); ok {
			if isID(id) {
				return id, p.rt, true
			}
			return "", "", false
		}
	}
	if isID(name) {
		return name, RuntimeUnknown, true
	}
	return "", "", false
}

// parentRuntime names the runtime of a bare id from its parent directory:
// /docker/<id> (docker, cgroupfs), /libpod_parent/<id> (podman, cgroupfs).
func parentRuntime(parent string) Runtime {
	switch {
	case parent == "docker":
		return RuntimeDocker
	case strings.HasPrefix(parent, "libpod_parent"), parent == "machine.slice":
		return RuntimePodman
	}
	return RuntimeUnknown
}

// podSegment finds a pod UID in pod<uid> (cgroupfs driver) or in
// kubepods[-<qos>]-pod<uid with underscores>.slice (systemd driver).
func podSegment(seg string) (string, bool) {
	name := strings.TrimSuffix(seg, ".slice")
	i := strings.LastIndex(name, "pod")
	if i < 0 {
		return "", false
	}
	if i > 0 && !strings.HasPrefix(name, "kubepods") {
		return "", false
	}
	uid := strings.ReplaceAll(name[i+3:], "_", "-")
	if !isUID(uid) {
		return "", false
	}
	return uid, true
}

func isID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// isUID accepts a UUID in its 8-4-4-4-12 form.
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(b byte) bool { return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' }
