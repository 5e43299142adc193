package cgroups

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	id  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uid = "6f1a2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	us  = "6f1a2b3c_4d5e_4f60_8a9b_0c1d2e3f4a5b"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		want       Container
	}{
		// docker
		{"docker cgroupfs v1", "/docker/" + id, Container{ID: id, Runtime: RuntimeDocker}},
		{"docker systemd unified", "/system.slice/docker-" + id + ".scope", Container{ID: id, Runtime: RuntimeDocker}},
		{"docker kubernetes cgroupfs", "/kubepods/burstable/pod" + uid + "/" + id, Container{ID: id, PodUID: uid}},
		{"docker kubernetes systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/docker-" + id + ".scope",
			Container{ID: id, Runtime: RuntimeDocker, PodUID: uid}},
		// containerd
		{"containerd kubernetes systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + id + ".scope",
			Container{ID: id, Runtime: RuntimeContainerd, PodUID: uid}},
		{"containerd kubernetes cgroupfs", "/kubepods/besteffort/pod" + uid + "/" + id, Container{ID: id, PodUID: uid}},
		{"containerd guaranteed systemd", "/kubepods.slice/kubepods-pod" + us + ".slice/cri-containerd-" + id + ".scope",
			Container{ID: id, Runtime: RuntimeContainerd, PodUID: uid}},
		{"containerd nerdctl", "/system.slice/containerd-" + id + ".scope", Container{ID: id, Runtime: RuntimeContainerd}},
		// cri-o
		{"crio systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice/crio-" + id + ".scope",
			Container{ID: id, Runtime: RuntimeCRIO, PodUID: uid}},
		{"crio cgroupfs", "/kubepods/pod" + uid + "/crio-" + id, Container{ID: id, Runtime: RuntimeCRIO, PodUID: uid}},
		{"crio conmon", "/kubepods.slice/kubepods-pod" + us + ".slice/crio-conmon-" + id + ".scope", Container{PodUID: uid}},
		// podman
		{"podman root systemd", "/machine.slice/libpod-" + id + ".scope", Container{ID: id, Runtime: RuntimePodman}},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", Container{ID: id, Runtime: RuntimePodman}},
		{"podman cgroupfs", "/libpod_parent/libpod-" + id, Container{ID: id, Runtime: RuntimePodman}},
		{"podman container payload", "/machine.slice/libpod-" + id + ".scope/container", Container{ID: id, Runtime: RuntimePodman}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + id + ".scope", Container{}},
		// not containers
		{"root", "/", Container{}},
		{"user session", "/user.slice/user-0.slice/session-3.scope", Container{}},
		{"service", "/system.slice/ssh.service", Container{}},
		{"short hex", "/docker/0123456789ab", Container{}},
		{"upper hex", "/docker/0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", Container{}},
		{"pod cgroup only", "/kubepods/burstable/pod" + uid, Container{PodUID: uid}},
		{"podman word", "/system.slice/podman.service", Container{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Parse(tc.path); got != tc.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tc.path, got, tc.want)
			}
		})
	}
}

// TestParseAll is /proc/PID/cgroup on the three kinds of hosts: the
// unified line first, as proc lists it.
func TestParseAll(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
		want  Container
	}{
		{"v2 only", []string{"/system.slice/docker-" + id + ".scope"}, Container{ID: id, Runtime: RuntimeDocker}},
		{"v1 only", []string{"/docker/" + id, "/docker/" + id, "/"}, Container{ID: id, Runtime: RuntimeDocker}},
		{"hybrid, container in v1 only", []string{"/", "/user.slice", "/kubepods/besteffort/pod" + uid + "/crio-" + id},
			Container{ID: id, Runtime: RuntimeCRIO, PodUID: uid}},
		{"hybrid, container in unified", []string{"/system.slice/cri-containerd-" + id + ".scope", "/"},
			Container{ID: id, Runtime: RuntimeContainerd}},
		{"pod without container", []string{"/", "/kubepods/pod" + uid}, Container{PodUID: uid}},
		{"none", []string{"/", "/user.slice"}, Container{}},
		{"empty", nil, Container{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseAll(tc.paths); got != tc.want {
				t.Errorf("ParseAll(%q) = %+v, want %+v", tc.paths, got, tc.want)
			}
		})
	}
}

func TestShortID(t *testing.T) {
	if got := (Container{ID: id}).ShortID(); got != "0123456789ab" {
		t.Errorf("ShortID = %q", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("/kubepods.slice/kubepods-pod" + us + ".slice/cri-containerd-" + id + ".scope")
	f.Add("/docker/" + id)
	f.Fuzz(func(t *testing.T, path string) {
		c := Parse(path)
		if c.ID != "" && !isID(c.ID) {
			t.Errorf("id %q", c.ID)
		}
		if c.PodUID != "" && !isUID(c.PodUID) {
			t.Errorf("uid %q", c.PodUID)
		}
	})
}
