package ecdsim

import (
	"cmp"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// The defaults of [Live].
const (
	DefaultLiveEvery      = time.Minute
	DefaultLiveInProgress = 15 * time.Second
)

// Live configures the image changes of the desktops marked [Desktop.Live].
//
// A live desktop has its seeded history of [Desktop.Records] settled
// records (the generator's status 0 becomes 1 there), followed by changes
// that start over time. Change k is record Records+k. Change 0 starts a
// jittered interval, uniform in [Every/2, 3·Every/2), after the later of
// the simulator's start (the clock at [New]) and the last history record;
// change k starts such an interval after change k-1 started, but not
// before change k-1 has ended, so a desktop has at most one change in
// progress. A change appears as a record with Status 0 and UpdateTime its
// start, stays so for a duration uniform in [InProgress/2, 3·InProgress/2)
// (at least 1 ms), then becomes Status 1, or Status 2 with a Reason (with
// probability FailFraction), with UpdateTime its end. Everything is a pure
// function of the seed, the desktop id and the simulator clock, in whole
// milliseconds: no goroutine runs, and a fake clock drives it. TotalCount
// grows as changes start, up to [MaxRecords]. The simulator keeps 24 bytes
// for each change up to the latest instant asked about, so asking about a
// far future with a short Every costs memory.
type Live struct {
	// Every is the mean time between the starts of consecutive changes,
	// exactly so while changes last less than Every/2; longer changes push
	// the next start back. 0 means DefaultLiveEvery.
	Every time.Duration
	// InProgress is the mean time a change stays in progress; 0 means
	// DefaultLiveInProgress.
	InProgress time.Duration
	// FailFraction of the changes, 0..1, fail.
	FailFraction float64
}

func checkLive(l Live) error {
	switch {
	case l.Every < 0:
		return fmt.Errorf("ecdsim: live interval %v is negative", l.Every)
	case l.InProgress < 0:
		return fmt.Errorf("ecdsim: live in-progress time %v is negative", l.InProgress)
	case !(l.FailFraction >= 0 && l.FailFraction <= 1):
		return fmt.Errorf("ecdsim: live fail fraction %v is outside 0..1", l.FailFraction)
	}
	return nil
}

// Change is a transition of a live desktop's record, as [Simulator.Changes]
// reports it.
type Change struct {
	// Index is the record's index, 0-based, oldest first.
	Index int
	// At is when the transition happens: the record's new UpdateTime.
	At time.Time
	// Status is the record's new status: 0 when the change starts (the
	// record appears), 1 or 2 when it ends.
	Status int
}

// liveChange is one change of a timeline, times in Unix milliseconds.
type liveChange struct {
	start, end int64
	failed     bool
	reason     int8 // index into failReasons
}

// timeline makes a live desktop's changes. The changes are computed in
// order, on demand, and kept: change k depends on change k-1's times.
type timeline struct {
	hash              uint64
	origin            int64 // Unix ms; change 0 starts an interval after it
	every, inProgress int64 // ms, at least 1
	failFraction      float64
	limit             int // most changes: MaxRecords less the history

	mu      sync.Mutex
	changes []liveChange
}

func newTimeline(d *desktop, l Live, start time.Time) *timeline {
	origin := start.UnixMilli()
	if d.Records > 0 {
		last := genRecord(d.hash, d.Records-1)
		origin = max(origin, last.millis+1)
	}
	return &timeline{
		hash:         d.hash ^ 0x6A09E667F3BCC909,
		origin:       origin,
		every:        max(1, cmp.Or(l.Every, DefaultLiveEvery).Milliseconds()),
		inProgress:   max(1, cmp.Or(l.InProgress, DefaultLiveInProgress).Milliseconds()),
		failFraction: l.FailFraction,
		limit:        MaxRecords - d.Records,
	}
}

// next returns change len(t.changes); t.mu is held.
func (t *timeline) next() liveChange {
	k := len(t.changes)
	g := splitmix{mix64(t.hash + uint64(k)*golden)}
	gap := t.every/2 + int64(g.next()%uint64(t.every))
	dur := max(1, t.inProgress/2+int64(g.next()%uint64(t.inProgress)))
	c := liveChange{
		failed: float64(g.next()>>11)/(1<<53) < t.failFraction,
		reason: int8(g.next() % uint64(len(failReasons))),
	}
	if k == 0 {
		c.start = t.origin + gap
	} else {
		prev := t.changes[k-1]
		c.start = max(prev.start+gap, prev.end+1)
	}
	c.end = c.start + dur
	return c
}

// started returns the changes that have started at Unix millisecond at.
// The slice is never written again, so it may be read without the lock.
func (t *timeline) started(at int64) []liveChange {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.changes) < t.limit && (len(t.changes) == 0 || t.changes[len(t.changes)-1].start <= at) {
		t.changes = append(t.changes, t.next())
	}
	n := sort.Search(len(t.changes), func(k int) bool { return t.changes[k].start > at })
	return t.changes[:n:n]
}

// view is a desktop's records as they are at one instant.
type view struct {
	d     *desktop
	at    int64 // Unix ms; for a live desktop only
	total int
	live  []liveChange // the changes started at at
}

// view returns the desktop's records at now.
func (d *desktop) view(now time.Time) view {
	v := view{d: d, total: d.Records}
	if d.timeline != nil {
		v.at = now.UnixMilli()
		v.live = d.timeline.started(v.at)
		v.total += len(v.live)
	}
	return v
}

// record returns record i, 0 <= i < v.total.
func (v *view) record(i int) recordParts {
	p := genRecord(v.d.hash, i)
	if v.d.timeline == nil {
		return p
	}
	if i < v.d.Records {
		if p.status == 0 {
			p.status = 1 // a live desktop's history is settled
		}
		return p
	}
	c := v.live[i-v.d.Records]
	p.status, p.millis, p.reason = 0, c.start, -1
	if c.end <= v.at {
		p.status, p.millis = 1, c.end
		if c.failed {
			p.status, p.reason = 2, int(c.reason)
		}
	}
	return p
}

// Records returns every record of a desktop as the simulator serves them
// when its clock reads at, oldest first, or nil for an unknown desktop. A
// desktop that is not live looks the same at every instant.
func (s *Simulator) Records(desktopID string, at time.Time) []Record {
	d := s.desktops[desktopID]
	if d == nil {
		return nil
	}
	v := d.view(at)
	out := make([]Record, v.total)
	for i := range out {
		p := v.record(i)
		out[i] = p.record()
	}
	return out
}

// Changes returns the transitions of a live desktop's records that happen
// after from and no later than to, in time order: a record's start (Status
// 0) then its end (Status 1 or 2). So Records(id, to) is Records(id, from)
// with these applied. It returns nil for a desktop that is not live.
// Times count in whole milliseconds, as UpdateTime does.
func (s *Simulator) Changes(desktopID string, from, to time.Time) []Change {
	d := s.desktops[desktopID]
	if d == nil || d.timeline == nil {
		return nil
	}
	lo, hi := from.UnixMilli(), to.UnixMilli()
	var out []Change
	for k, c := range d.timeline.started(hi) {
		if lo < c.start && c.start <= hi {
			out = append(out, Change{Index: d.Records + k, At: time.UnixMilli(c.start).UTC(), Status: 0})
		}
		if lo < c.end && c.end <= hi {
			st := 1
			if c.failed {
				st = 2
			}
			out = append(out, Change{Index: d.Records + k, At: time.UnixMilli(c.end).UTC(), Status: st})
		}
	}
	return out
}

// String describes the settings with the defaults applied, e.g. "every
// 1m0s, in progress 15s, 20% fail".
func (l Live) String() string {
	return fmt.Sprintf("every %v, in progress %v, %.0f%% fail",
		cmp.Or(l.Every, DefaultLiveEvery), cmp.Or(l.InProgress, DefaultLiveInProgress), math.Round(l.FailFraction*100))
}
