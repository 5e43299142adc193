package probe

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

func TestFeature(t *testing.T) {
	for _, tc := range []struct {
		name         string
		err          error
		wantNil      bool
		notSupported bool
		msg          string
	}{
		{name: "present", wantNil: true},
		{
			name:         "missing",
			err:          fmt.Errorf("map type RingBuf: %w", ebpf.ErrNotSupported),
			notSupported: true,
			msg:          "map type ringbuf (Linux 5.8): not supported",
		},
		{
			name: "probe failed",
			err:  os.ErrPermission,
			msg:  "probe map type ringbuf: permission denied",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := feature("map type ringbuf", tc.err)
			if tc.wantNil {
				if err != nil {
					t.Fatalf("feature: %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tc.msg {
				t.Fatalf("feature: %v, want %q", err, tc.msg)
			}
			if got := errors.Is(err, ErrNotSupported); got != tc.notSupported {
				t.Errorf("errors.Is(ErrNotSupported) = %v, want %v", got, tc.notSupported)
			}
		})
	}
}
