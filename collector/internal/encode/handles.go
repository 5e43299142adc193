package encode

import "container/heap"

// handles allocates small integer handles, starting at 1 and always handing
// out the smallest free one, so that handles stay short as varints.
type handles struct {
	next uint32  // highest handle ever allocated
	free minHeap // released handles below next
}

func (h *handles) get() uint32 {
	if len(h.free) > 0 {
		return heap.Pop(&h.free).(uint32)
	}
	h.next++
	return h.next
}

func (h *handles) put(x uint32) {
	heap.Push(&h.free, x)
}

func (h *handles) reset() {
	h.next = 0
	h.free = h.free[:0]
}

type minHeap []uint32

func (m minHeap) Len() int           { return len(m) }
func (m minHeap) Less(i, j int) bool { return m[i] < m[j] }
func (m minHeap) Swap(i, j int)      { m[i], m[j] = m[j], m[i] }
func (m *minHeap) Push(x any)        { *m = append(*m, x.(uint32)) }
func (m *minHeap) Pop() any {
	old := *m
	x := old[len(old)-1]
	*m = old[:len(old)-1]
	return x
}
