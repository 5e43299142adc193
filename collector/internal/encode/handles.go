package encode

// handles allocates small integer handles, starting at 1 and always handing
// out the smallest free one, so that handles stay short as varints.
type handles struct {
	next uint32  // highest handle ever allocated
	free minHeap // released handles below next
}

func (h *handles) get() uint32 {
	if len(h.free) > 0 {
		return h.free.pop()
	}
	h.next++
	return h.next
}

func (h *handles) put(x uint32) {
	h.free.push(x)
}

func (h *handles) reset() {
	h.next = 0
	h.free = h.free[:0]
}

// minHeap is a binary min-heap of handles. Not container/heap: its Push and
// Pop pass each handle as an interface value, which allocates for every
// handle past 255, twice per short connection.
type minHeap []uint32

func (m *minHeap) push(x uint32) {
	h := append(*m, x)
	i := len(h) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent] <= h[i] {
			break
		}
		h[parent], h[i] = h[i], h[parent]
		i = parent
	}
	*m = h
}

func (m *minHeap) pop() uint32 {
	h := *m
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		small, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && h[l] < h[small] {
			small = l
		}
		if r < len(h) && h[r] < h[small] {
			small = r
		}
		if small == i {
			break
		}
		h[i], h[small] = h[small], h[i]
		i = small
	}
	*m = h
	return top
}
