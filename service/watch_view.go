package service

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
)

// What a watch compares. The upstream gives records no id and documents no
// order (see WatchImageModifiedRecords in the proto), so:
//
//   - a settled record (any Status but 0) never changes again, and its
//     recordKey hashes every field: two records equal in every field,
//     update_time to the millisecond, are one record;
//   - a record in progress (Status 0) changes when it settles, but not its
//     images: its changeKey hashes (ImageID, NewImageID), and a settled
//     record with the changeKey of a record that was in progress is that
//     record, settled.
//
// A poll's records become a watchView: the records sorted by update_time
// (then by recordKey), whatever order the pages had, with the keys indexed.
// Two views are compared as sets (diffViews); a watcher that lags or
// resumes compares its watchCursor with a view instead.

// recordKey identifies a settled record.
type recordKey uint64

// changeKey identifies a record in progress by its images.
type changeKey uint64

func keyOf(r *upstream.Record) recordKey {
	h := fnv.New64a()
	var b [2 * binary.MaxVarintLen64]byte
	n := binary.PutVarint(b[:], int64(r.Status))
	n += binary.PutVarint(b[n:], r.UpdateTime.UnixMilli())
	h.Write(b[:n])
	for _, s := range []string{r.ImageID, r.ImageName, r.NewImageID, r.NewImageName, r.Reason} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return recordKey(h.Sum64())
}

func changeOf(r *upstream.Record) changeKey {
	h := fnv.New64a()
	h.Write([]byte(r.ImageID))
	h.Write([]byte{0})
	h.Write([]byte(r.NewImageID))
	return changeKey(h.Sum64())
}

// running reports whether r is in progress.
func running(r *upstream.Record) bool { return r.Status == 0 }

// watchEventKind is what a watch event says about its record.
type watchEventKind int

const (
	// eventAdded: a record the watcher did not know.
	eventAdded watchEventKind = iota
	// eventSettled: a record the watcher knew in progress has settled.
	eventSettled
)

// watchEvent is one change between two views, for one record of the later.
type watchEvent struct {
	kind   watchEventKind
	record *upstream.Record
}

// watchView is one poll of a desktop. It is never changed once published,
// so every watcher of the poller reads it without a lock.
type watchView struct {
	// version counts the poller's views from 1.
	version  int64
	polledAt time.Time
	// records are sorted by update_time, then by key; settled duplicates
	// are left out.
	records []upstream.Record
	keys    []recordKey
	settled map[recordKey]bool
	// running counts the records in progress by changeKey.
	running map[changeKey]int
	// events are the changes since the previous view (none in the first).
	events []watchEvent
	// err, when not nil, is a poll error that ends every watcher.
	err error
}

// newWatchView indexes the records of a poll.
func newWatchView(records []upstream.Record, polledAt time.Time) *watchView {
	keys := make([]recordKey, len(records))
	order := make([]int, len(records))
	for i := range records {
		keys[i], order[i] = keyOf(&records[i]), i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(records[a].UpdateTime.Compare(records[b].UpdateTime), cmp.Compare(keys[a], keys[b]))
	})
	v := &watchView{polledAt: polledAt, settled: map[recordKey]bool{}, running: map[changeKey]int{}}
	for _, i := range order {
		r := &records[i]
		if running(r) {
			v.running[changeOf(r)]++
		} else if v.settled[keys[i]] {
			continue // the same settled record twice
		} else {
			v.settled[keys[i]] = true
		}
		v.records = append(v.records, *r)
		v.keys = append(v.keys, keys[i])
	}
	return v
}

// inProgress counts the records in progress.
func (v *watchView) inProgress() int {
	n := 0
	for _, c := range v.running {
		n += c
	}
	return n
}

// diffViews returns the events that turn prev into next, in update_time
// order: a settled record new to prev whose changeKey was in progress in
// prev settles that record; any other record new to prev is added. A
// record that was in progress and still is (its update_time may move) is
// no event.
func diffViews(prev, next *watchView) []watchEvent {
	settling := map[changeKey]int{} // records of prev in progress that settled
	var events []watchEvent
	for i := range next.records {
		r := &next.records[i]
		c := changeOf(r)
		switch {
		case running(r):
			continue // decided below, once the settled records are known
		case prev.settled[next.keys[i]]:
			continue
		case prev.running[c] > settling[c]:
			settling[c]++
			events = append(events, watchEvent{kind: eventSettled, record: r})
		default:
			events = append(events, watchEvent{kind: eventAdded, record: r})
		}
	}
	// A change still in progress is known unless the record prev knew in
	// progress with its images has settled: then it is a new change.
	left := map[changeKey]int{}
	for c, n := range prev.running {
		left[c] = n - settling[c]
	}
	for i := range next.records {
		r := &next.records[i]
		if !running(r) {
			continue
		}
		if c := changeOf(r); left[c] > 0 {
			left[c]--
			continue
		}
		events = append(events, watchEvent{kind: eventAdded, record: r})
	}
	slices.SortStableFunc(events, func(a, b watchEvent) int { return a.record.UpdateTime.Compare(b.record.UpdateTime) })
	return events
}

// watchCursor is what a watcher has been told: every record with an
// update_time before mark, the records at mark whose keys are in atMark,
// and the changes in running as in progress. It is what a resume_cursor
// encodes.
type watchCursor struct {
	mark    int64       // Unix milliseconds
	atMark  []recordKey // sorted
	running []changeKey // sorted, a change once per record in progress
}

// cursorOf is the cursor of a watcher that knows v as it is.
func cursorOf(v *watchView) *watchCursor {
	c := &watchCursor{mark: minMark}
	for i := range v.records {
		c.learn(&v.records[i], v.keys[i])
		if r := &v.records[i]; running(r) {
			c.running = insertSorted(c.running, changeOf(r))
		}
	}
	return c
}

// minMark is the mark of a watcher that knows no record.
const minMark = -1 << 62

// learn moves the mark to a record the watcher was told about.
func (c *watchCursor) learn(r *upstream.Record, k recordKey) {
	switch t := r.UpdateTime.UnixMilli(); {
	case t > c.mark:
		c.mark, c.atMark = t, append(c.atMark[:0], k)
	case t == c.mark:
		if i, found := slices.BinarySearch(c.atMark, k); !found {
			c.atMark = slices.Insert(c.atMark, i, k)
		}
	}
}

// apply records that the watcher was told e.
func (c *watchCursor) apply(e watchEvent) {
	c.learn(e.record, keyOf(e.record))
	ch := changeOf(e.record)
	if e.kind == eventSettled {
		if i, ok := slices.BinarySearch(c.running, ch); ok {
			c.running = slices.Delete(c.running, i, i+1)
		}
	}
	if running(e.record) {
		c.running = insertSorted(c.running, ch)
	}
}

// seen reports whether the watcher was told of r by the time it was told
// of the mark: r is older, or at the mark and one of the records there.
func (c *watchCursor) seen(r *upstream.Record, k recordKey) bool {
	t := r.UpdateTime.UnixMilli()
	if t != c.mark {
		return t < c.mark
	}
	_, ok := slices.BinarySearch(c.atMark, k)
	return ok
}

// events returns what the watcher does not know of v, in update_time
// order, by the rules of diffViews: a settled record it was not told of
// settles a change it knew in progress with the same images, or is added;
// a record in progress is known while a change with its images is.
func (c *watchCursor) events(v *watchView) []watchEvent {
	known := map[changeKey]int{}
	for _, ch := range c.running {
		known[ch]++
	}
	var events []watchEvent
	for i := range v.records {
		r := &v.records[i]
		if running(r) || c.seen(r, v.keys[i]) {
			continue
		}
		if ch := changeOf(r); known[ch] > 0 {
			known[ch]--
			events = append(events, watchEvent{kind: eventSettled, record: r})
		} else {
			events = append(events, watchEvent{kind: eventAdded, record: r})
		}
	}
	for i := range v.records {
		r := &v.records[i]
		if !running(r) {
			continue
		}
		if ch := changeOf(r); known[ch] > 0 {
			known[ch]--
			continue
		}
		if !c.seen(r, v.keys[i]) {
			events = append(events, watchEvent{kind: eventAdded, record: r})
		}
	}
	slices.SortStableFunc(events, func(a, b watchEvent) int { return a.record.UpdateTime.Compare(b.record.UpdateTime) })
	return events
}

func (c *watchCursor) clone() *watchCursor {
	return &watchCursor{mark: c.mark, atMark: slices.Clone(c.atMark), running: slices.Clone(c.running)}
}

// insertSorted inserts x into the sorted s, keeping duplicates.
func insertSorted[T cmp.Ordered](s []T, x T) []T {
	i, _ := slices.BinarySearch(s, x)
	return slices.Insert(s, i, x)
}
