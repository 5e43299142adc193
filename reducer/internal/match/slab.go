package match

// slab holds records of one type in fixed-size chunks, addressed by 32-bit
// indices: no record is an allocation of its own, a pointer to a record
// stays valid while the record lives (chunks never move), and a freed
// index is reused first. Index 0 is never handed out: it means none.
type slab[T any] struct {
	chunks [][]T
	free   []uint32
	next   uint32 // the lowest index never handed out
	n      int    // records in use
}

const (
	slabChunkBits = 12
	slabChunk     = 1 << slabChunkBits
	slabMask      = slabChunk - 1
)

// at returns the record of index i.
func (s *slab[T]) at(i uint32) *T { return &s.chunks[i>>slabChunkBits][i&slabMask] }

// alloc returns the index of a zeroed record.
func (s *slab[T]) alloc() uint32 {
	s.n++
	if n := len(s.free); n > 0 {
		i := s.free[n-1]
		s.free = s.free[:n-1]
		return i
	}
	if s.next == 0 {
		s.next = 1
	}
	i := s.next
	if int(i>>slabChunkBits) == len(s.chunks) {
		s.chunks = append(s.chunks, make([]T, slabChunk))
	}
	s.next++
	return i
}

// release zeroes the record of index i and lets its index be reused.
func (s *slab[T]) release(i uint32) {
	var zero T
	*s.at(i) = zero
	s.free = append(s.free, i)
	s.n--
}

// Len returns the number of records in use.
func (s *slab[T]) Len() int { return s.n }
