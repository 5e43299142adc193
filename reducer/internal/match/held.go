package match

// heldQueue is the queue of held flows, oldest first, with the times they
// were born: in runs of equal times, since the new flows of one batch
// share its time, so that a flow record needs no time of its own.
type heldQueue struct {
	ids  []flowID
	runs []heldRun
}

// heldRun is the time a run of the queue's flows were born and their number.
type heldRun struct {
	born int64 // unix nanoseconds
	n    int
}

// push adds a flow born at born (no earlier than the last one's) at the
// tail.
func (q *heldQueue) push(id flowID, born int64) {
	q.ids = append(q.ids, id)
	if n := len(q.runs); n > 0 && q.runs[n-1].born == born {
		q.runs[n-1].n++
		return
	}
	q.runs = append(q.runs, heldRun{born: born, n: 1})
}

// pop takes the n oldest flows off the head. The slices are re-sliced,
// not copied down: the queue is long (the flows of a join window) and each
// batch takes a few off its head; append moves the rest when it grows.
func (q *heldQueue) pop(n int) {
	if n == 0 {
		return
	}
	q.ids = q.ids[n:]
	for n > 0 && n >= q.runs[0].n {
		n -= q.runs[0].n
		q.runs = q.runs[1:]
	}
	if n > 0 {
		q.runs[0].n -= n
	}
	if len(q.ids) == 0 {
		q.ids, q.runs = q.ids[:0:0], q.runs[:0:0]
	}
}
