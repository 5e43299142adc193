package match

// flowIndex finds the oldest flow of each key's chain: an open-addressed
// table of flow ids whose keys are in the flows themselves, so that an
// entry is 8 bytes (the id and 32 bits of the key's hash) where a
// map[flowKey]flowID took about 43 per flow. Collisions probe linearly;
// a delete shifts the entries after it back, so that no tombstone is left.
type flowIndex struct {
	slots []uint64 // hash<<32 | id; 0 is empty
	n     int
	key   func(flowID) *flowKey
}

func newFlowIndex(key func(flowID) *flowKey) flowIndex {
	return flowIndex{slots: make([]uint64, 1024), key: key}
}

// hashKey mixes the fields of a key (a multiply-xorshift hash).
func hashKey(k *flowKey) uint64 {
	h := uint64(k.a)<<32 | uint64(k.b)
	h ^= (uint64(k.pa)<<16 | uint64(k.pb)) * 0x9e3779b97f4a7c15
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 31
	h *= 0x94d049bb133111eb
	h ^= h >> 29
	return h
}

// find returns the slot of k and whether it holds k; if not, the empty
// slot where k would go.
func (x *flowIndex) find(k *flowKey) (int, bool) {
	h := hashKey(k)
	tag := h >> 32
	mask := len(x.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return i, false
		}
		if s>>32 == tag && *x.key(flowID(s)) == *k {
			return i, true
		}
	}
}

// get returns the head flow of k's chain; 0 if none.
func (x *flowIndex) get(k flowKey) flowID {
	if i, ok := x.find(&k); ok {
		return flowID(x.slots[i])
	}
	return 0
}

// set makes id (whose key is k) the head of k's chain.
func (x *flowIndex) set(k flowKey, id flowID) {
	i, ok := x.find(&k)
	x.slots[i] = hashKey(&k)>>32<<32 | uint64(id)
	if ok {
		return
	}
	if x.n++; 4*x.n > 3*len(x.slots) {
		x.resize(2 * len(x.slots))
	}
}

// del removes k's chain.
func (x *flowIndex) del(k flowKey) {
	i, ok := x.find(&k)
	if !ok {
		return
	}
	mask := len(x.slots) - 1
	// Shift back the entries of the run after i that probed past it.
	for j := (i + 1) & mask; x.slots[j] != 0; j = (j + 1) & mask {
		home := int(hashKey(x.key(flowID(x.slots[j])))) & mask
		// The entry at j may move to i when i lies cyclically in
		// [home, j).
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			x.slots[i] = x.slots[j]
			i = j
		}
	}
	x.slots[i] = 0
	x.n--
	if len(x.slots) > 1024 && 8*x.n < len(x.slots) {
		x.resize(len(x.slots) / 2)
	}
}

func (x *flowIndex) resize(n int) {
	old := x.slots
	x.slots = make([]uint64, n)
	mask := n - 1
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := int(hashKey(x.key(flowID(s)))) & mask
		for x.slots[i] != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = s
	}
}

// len returns the number of chains.
func (x *flowIndex) len() int { return x.n }
