package probe

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// TestPrivilegedOrphanSample closes a client whose data the server has not
// read yet, so that the kernel still has it to send after the close(): an
// orphan, which no process holds. Where the sampling walk goes over open
// files, the close() sends an EventOrphan with the client's counters so
// far; where it goes over the storage map, the walk still samples the
// orphan. Either way the client's end is known before its close event,
// which comes only once the server has read everything, with all of it.
func TestPrivilegedOrphanSample(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	ln := listen(t, "tcp4", "127.0.0.1:0")
	cp := dialPair(t, ln)
	defer cp.close()
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	// Fill the buffers: the server reads nothing yet.
	if err := cp.client.SetWriteDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	written := 0
	for {
		n, err := cp.client.Write(buf)
		written += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := cp.client.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d bytes, then closed the client", written)
	if r.p.fileWalk {
		ev := r.wait(t, "the client's orphan sample", onPorts(EventOrphan, client.Port(), server.Port()))
		if ev.Role != RoleClient || ev.Counters.BytesAcked >= uint64(written) {
			t.Errorf("orphan sample: role %v, %d bytes acked of %d written; want the client's, with data left to send", ev.Role, ev.Counters.BytesAcked, written)
		}
	} else {
		s := waitSample(t, r.p, client.Port(), server.Port())
		if s.Counters.BytesAcked >= uint64(written) {
			t.Errorf("sample of the orphan: %d bytes acked of %d written, want data left to send", s.Counters.BytesAcked, written)
		}
	}
	n, err := io.Copy(io.Discard, cp.server)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(written) {
		t.Fatalf("the server read %d bytes, want %d", n, written)
	}
	ev := r.wait(t, "the client's close", onPorts(EventClose, client.Port(), server.Port()))
	if ev.Counters.BytesAcked != uint64(written) {
		t.Errorf("close: %d bytes acked, want %d", ev.Counters.BytesAcked, written)
	}
}
