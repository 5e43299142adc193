package metadata

import (
	"fmt"
	"testing"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// FuzzCache applies arbitrary sequences of pods, services, nodes and
// deletions (few identities and addresses, so that they collide: reused
// IPs, pods moving between nodes, services sharing an address) and checks
// the invariants of an authoritative cache:
//   - every address the sinks name is named by an object the cache holds;
//   - after every object is deleted, nothing is left in the cache or the
//     sinks: state is freed exactly when the source says so.
func FuzzCache(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0, 17, 34, 51, 0, 3, 200, 100, 7, 7, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		tb := &table{m: map[resolve.Key]map[resolve.Rank]aggregate.Workload{}}
		c := NewCache(SinksOf(tb))
		ip := func(b byte) string { return fmt.Sprintf("198.18.0.%d", b%4) }
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			id := fmt.Sprint(arg % 3)
			switch op % 7 {
			case 0, 1:
				p := podD("p"+id, "pod-"+id, "ns", fmt.Sprintf("n%d", arg%2), "deployment", "d"+id, int64(arg), ip(arg>>2))
				if op%7 == 1 {
					p.GetPod().Phase = metadatav1.PodPhase_POD_PHASE_SUCCEEDED
				}
				if arg&0x80 != 0 {
					p.GetPod().HostNetwork = true
				}
				c.Apply(p)
			case 2:
				c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_POD, "p"+id))
			case 3:
				c.Apply(&metadatav1.Delta{Object: &metadatav1.Delta_Service{Service: &metadatav1.Service{Uid: "s" + id, Name: "svc-" + id, ClusterIps: []string{ip(arg >> 2), "not-an-ip"}}}})
			case 4:
				c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_SERVICE, "s"+id))
			case 5:
				c.Apply(&metadatav1.Delta{Object: &metadatav1.Delta_Node{Node: &metadatav1.Node{Name: fmt.Sprintf("n%d", arg%2), InternalIps: []string{ip(arg >> 2)}, Zone: fmt.Sprint(arg >> 4)}}})
			case 6:
				c.Apply(delD(metadatav1.ObjectKind_OBJECT_KIND_NODE, fmt.Sprintf("n%d", arg%2)))
			}
			for k := range tb.m {
				if k.Kind == resolve.KeyIP {
					if _, ok := c.Lookup(k.Addr); !ok {
						t.Fatalf("the sinks name %v, which no object of the cache has", k.Addr)
					}
				}
			}
		}
		c.Sweep(nil)
		if p, s, n := c.Counts(); p+s+n != 0 || len(tb.m) != 0 || len(c.ipPods)+len(c.ipOwner)+len(c.svcIP)+len(c.nodeIP)+len(c.nodePods) != 0 {
			t.Fatalf("after deleting everything: %d pods %d services %d nodes, sinks %v, indexes %d %d %d %d %d",
				p, s, n, tb.m, len(c.ipPods), len(c.ipOwner), len(c.svcIP), len(c.nodeIP), len(c.nodePods))
		}
	})
}
