package upstream

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Pacer spaces the upstream calls of one gateway replica so that they stay
// within the account's API quota, which the gateway does not know: Alibaba
// Cloud answers Throttling.User past it. The pacer starts at its ceiling
// (--upstream-qps) and adapts to the answers:
//
//   - Heavy throttling (more than a fifth of the recent answers) lowers the
//     rate at once, by a fifth per round trip: only a throttle answer to a
//     call sent after the last decrease counts, so the answers to calls
//     already in flight at the old rate do not lower it again.
//   - At the end of every window (half a second), a throttled window lowers
//     the rate to just under the rate of calls that succeeded in it (what
//     the quota let through). A window without throttles in which callers
//     had to wait for the pacer counts as clean, and every few clean
//     windows the rate climbs back by a few percent toward the ceiling.
//   - Throttling that the rate does not change is not this replica's doing
//     (another client of the account, or a fault): when a whole window
//     after a decrease is throttled about as much as before it while calls
//     still get through, the pacer restores the rate from before the
//     decrease and ignores throttles for a while, rather than starve its
//     callers for nothing. When nothing gets through at all, the rate
//     stays low: the quota is used up elsewhere or gone.
//
// Callers wait in one queue and go in arrival order, one slot every
// 1/rate (after a burst allowance), at the rate in force when their turn
// comes. RPCs sharing the pacer are served fairly: a long stream has at
// most one call waiting at a time, so a List call waits behind at most
// one call per RPC in progress.
//
// Several replicas that share one quota and know nothing of each other
// each adapt this way and settle together near the quota. A Pacer is safe
// for concurrent use.
type Pacer struct {
	clock   pacerClock
	ceiling float64 // calls/s; 0: no ceiling
	burst   float64 // calls that may go at once after a pause

	mu sync.Mutex
	// rate is the current rate in calls/s; 0 (no ceiling, no throttle yet)
	// spaces nothing.
	rate float64
	// tat is the theoretical arrival time of the next call (GCRA): a call
	// may go at tat - (burst-1)/rate or later.
	tat     time.Time
	queue   []*waiter
	timerAt time.Time   // when the armed timer fires; zero: none armed
	stop    func() bool // stops the armed timer

	sends        [32]time.Time // the latest send times, a ring
	nsends       int
	recent       float64   // decaying average of "this answer was a throttle"
	lastDecrease time.Time // calls sent before it do not lower the rate again
	throttleSeen bool

	win       window
	clean     int // clean saturated windows in a row
	episode   *episode
	holdUntil time.Time
}

// waiter is a caller in the queue; go is called once its slot comes.
type waiter struct {
	deadline time.Time // zero: none
	goAt     func(at time.Time)
}

// window counts what happened in one pacing window.
type window struct {
	start time.Time
	// calls answered, of which throttled and succeeded; calls sent, of
	// which waited for their slot.
	calls, throttled, ok, sent, waited int
}

// episode remembers the rate before throttling lowered it, to restore it
// when lowering did not help.
type episode struct {
	rate      float64
	throttled float64   // the throttled fraction that started it
	start     time.Time // windows from here on ran at the lowered rate
}

const (
	pacerWindow = 500 * time.Millisecond
	// heavyThrottling is the recent throttled fraction above which every
	// round trip lowers the rate by fastDecrease.
	heavyThrottling = 0.2
	fastDecrease    = 0.8
	// afterWindowDecrease is the rate, as a fraction of the calls that
	// succeeded in a throttled window, that the window sets.
	afterWindowDecrease = 0.95
	// cleanWindowsToIncrease saturated windows without a throttle raise the
	// rate by increaseFactor.
	cleanWindowsToIncrease = 2
	increaseFactor         = 1.05
	// notOurs: a window after a decrease throttled at least this share of
	// the throttled fraction before it shows the throttling is not caused
	// by the rate; throttles are then ignored for holdWindows windows.
	notOurs     = 0.8
	holdWindows = 10
	// significantThrottling is the least throttled fraction from which
	// "lowering did not help" is told apart from noise.
	significantThrottling = 0.1
	// minRate is the lowest rate the pacer goes down to, in calls/s.
	minRate = 0.5
	// recentWeight is the weight of the newest answer in recent.
	recentWeight = 0.1
)

// pacerClock is the pacer's time; tests simulate it.
type pacerClock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// NewPacer returns a pacer whose rate never exceeds ceiling calls per
// second, with burst calls allowed at once after a pause. ceiling 0 means
// no ceiling: calls are not spaced until the upstream first throttles, and
// the pacer then starts from the rate the calls were sent at.
func NewPacer(ceiling float64, burst int) *Pacer {
	return newPacer(ceiling, burst, realClock{})
}

func newPacer(ceiling float64, burst int, clock pacerClock) *Pacer {
	p := &Pacer{clock: clock, ceiling: max(ceiling, 0), burst: float64(max(burst, 1)), rate: max(ceiling, 0)}
	p.win.start = clock.Now()
	return p
}

// Rate returns the current rate in calls per second; 0 means calls are not
// spaced.
func (p *Pacer) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rate
}

// Queued returns how many callers wait for their slot.
func (p *Pacer) Queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// ErrPacingDeadline reports that a call's slot would come after its
// context's deadline; it wraps context.DeadlineExceeded.
var ErrPacingDeadline = fmt.Errorf("no upstream quota slot before the deadline: %w", context.DeadlineExceeded)

// Wait waits for the caller's slot and returns how long it waited. When
// the slot would come after ctx's deadline it fails at once with
// [ErrPacingDeadline]; when ctx ends while waiting it returns ctx's cause.
func (p *Pacer) Wait(ctx context.Context) (time.Duration, error) {
	if ctx.Err() != nil {
		return 0, context.Cause(ctx)
	}
	start := p.clock.Now()
	deadline, _ := ctx.Deadline()
	slot := make(chan time.Time, 1)
	w, ok := p.enqueue(deadline, func(at time.Time) { slot <- at })
	if !ok {
		return 0, ErrPacingDeadline
	}
	if w == nil { // went at once
		return 0, nil
	}
	select {
	case at := <-slot:
		return at.Sub(start), nil
	case <-ctx.Done():
		if !p.cancel(w) {
			<-slot // the slot came as ctx ended; it is spent
		}
		return 0, context.Cause(ctx)
	}
}

// enqueue queues a caller whose slot calls goAt. A caller who may go at
// once gets goAt called before enqueue returns, and a nil waiter. ok is
// false, and nothing is queued, when the slot would come after deadline.
func (p *Pacer) enqueue(deadline time.Time, goAt func(time.Time)) (_ *waiter, ok bool) {
	p.mu.Lock()
	now := p.clock.Now()
	p.roll(now)
	if len(p.queue) == 0 && p.free(now) {
		p.send(now, false)
		p.mu.Unlock()
		goAt(now)
		return nil, true
	}
	if !deadline.IsZero() && p.estimate(now, len(p.queue)).After(deadline) {
		p.mu.Unlock()
		return nil, false
	}
	w := &waiter{deadline: deadline, goAt: goAt}
	p.queue = append(p.queue, w)
	p.arm(now)
	p.mu.Unlock()
	return w, true
}

// cancel takes w out of the queue; false means its slot came already.
func (p *Pacer) cancel(w *waiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, q := range p.queue {
		if q == w {
			p.queue = append(p.queue[:i], p.queue[i+1:]...)
			if i == 0 {
				p.arm(p.clock.Now())
			}
			return true
		}
	}
	return false
}

// interval is the time between slots at the current rate.
func (p *Pacer) interval() time.Duration {
	return time.Duration(float64(time.Second) / p.rate)
}

// free reports whether a call may go at now.
func (p *Pacer) free(now time.Time) bool {
	return p.rate <= 0 || !now.Before(p.nextFree())
}

// nextFree is the earliest time the next call may go.
func (p *Pacer) nextFree() time.Time {
	return p.tat.Add(-time.Duration((p.burst - 1) * float64(p.interval())))
}

// estimate is when the caller behind ahead others would go at the current
// rate.
func (p *Pacer) estimate(now time.Time, ahead int) time.Time {
	if p.rate <= 0 {
		return now
	}
	return later(now, p.nextFree()).Add(time.Duration(ahead) * p.interval())
}

// send counts a call that goes at now and moves the schedule on.
func (p *Pacer) send(now time.Time, waited bool) {
	p.sends[p.nsends%len(p.sends)] = now
	p.nsends++
	p.win.sent++
	if waited {
		p.win.waited++
	}
	if p.rate > 0 {
		p.tat = later(p.tat, now).Add(p.interval())
	}
}

// arm makes the timer fire when the queue's head may go.
func (p *Pacer) arm(now time.Time) {
	if len(p.queue) == 0 {
		return
	}
	at := now
	if p.rate > 0 {
		at = later(now, p.nextFree())
	}
	if !p.timerAt.IsZero() && !p.timerAt.After(at) {
		return // fires soon enough; dispatch re-arms
	}
	if p.stop != nil {
		p.stop()
	}
	p.timerAt = at
	p.stop = p.clock.AfterFunc(at.Sub(now), p.dispatch)
}

// dispatch lets go the callers whose slots have come.
func (p *Pacer) dispatch() {
	p.mu.Lock()
	now := p.clock.Now()
	p.timerAt, p.stop = time.Time{}, nil
	p.roll(now)
	var ready []*waiter
	for len(p.queue) > 0 && p.free(now) {
		w := p.queue[0]
		p.queue = p.queue[1:]
		p.send(now, true)
		ready = append(ready, w)
	}
	p.arm(now)
	p.mu.Unlock()
	for _, w := range ready {
		w.goAt(now)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Outcome is what an upstream answer says about the quota.
type Outcome int

const (
	// Succeeded: the call got past the quota.
	Succeeded Outcome = iota
	// Throttled: the upstream refused the call for flow control.
	Throttled
	// Failed: any other failure; it says nothing about the quota.
	Failed
)

// Observe tells the pacer the outcome of a call sent at sent.
func (p *Pacer) Observe(sent time.Time, o Outcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	p.roll(now)
	if o == Failed {
		return
	}
	p.win.calls++
	isThrottle := 0.0
	if o == Throttled {
		p.win.throttled++
		isThrottle = 1
	} else {
		p.win.ok++
	}
	p.recent += recentWeight * (isThrottle - p.recent)
	if o != Throttled || now.Before(p.holdUntil) {
		return
	}
	if !p.throttleSeen {
		p.throttleSeen = true
		if p.rate <= 0 { // no ceiling: start from the rate calls were sent at
			p.rate = p.sendRate(now)
			p.tat = now
		}
	}
	if p.recent > heavyThrottling && sent.After(p.lastDecrease) {
		p.startEpisode(now, p.recent)
		p.setRate(now, p.rate*fastDecrease)
		p.lastDecrease = now
	}
}

// sendRate is the rate of the latest sends, up to now.
func (p *Pacer) sendRate(now time.Time) float64 {
	n := min(p.nsends, len(p.sends))
	if n == 0 {
		return minRate
	}
	oldest := p.sends[(p.nsends-n)%len(p.sends)]
	span := max(now.Sub(oldest), time.Millisecond).Seconds()
	return max(float64(n)/span, minRate)
}

// startEpisode remembers the rate before a decrease, unless an episode of
// decreases is going on already.
func (p *Pacer) startEpisode(at time.Time, throttled float64) {
	if p.episode == nil {
		p.episode = &episode{rate: p.rate, throttled: throttled, start: at}
	}
}

// setRate changes the rate within [minRate, ceiling] and reschedules the
// queue's head.
func (p *Pacer) setRate(now time.Time, r float64) {
	r = max(r, minRate)
	if p.ceiling > 0 {
		r = min(r, p.ceiling)
	}
	if r == p.rate {
		return
	}
	// Keep the schedule's backlog in calls, not in time: tat - now at the
	// old interval becomes the same number of intervals at the new one.
	if p.rate > 0 && p.tat.After(now) {
		backlog := float64(p.tat.Sub(now)) / float64(p.interval())
		p.rate = r
		p.tat = now.Add(time.Duration(backlog * float64(p.interval())))
	} else {
		p.rate = r
	}
	if p.stop != nil {
		p.stop()
		p.timerAt, p.stop = time.Time{}, nil
	}
	p.arm(now)
}

// roll ends the windows that have passed by now and adapts the rate to
// what each one saw.
func (p *Pacer) roll(now time.Time) {
	for now.Sub(p.win.start) >= pacerWindow {
		end := p.win.start.Add(pacerWindow)
		p.endWindow(now, end)
		p.win = window{start: end}
		if now.Sub(end) >= pacerWindow { // idle windows: start afresh
			p.win.start = now
		}
	}
}

func (p *Pacer) endWindow(now, end time.Time) {
	w := p.win
	if w.calls == 0 || p.rate <= 0 {
		return
	}
	if w.throttled == 0 {
		p.episode = nil
		saturated := w.waited*4 >= w.sent && w.sent > 0
		if !saturated || (p.ceiling > 0 && p.rate >= p.ceiling) {
			p.clean = 0
			return
		}
		if p.clean++; p.clean >= cleanWindowsToIncrease {
			p.clean = 0
			p.setRate(now, p.rate*increaseFactor)
		}
		return
	}
	p.clean = 0
	if !end.After(p.holdUntil) {
		return // throttling that is not ours: ignored for now
	}
	throttled := float64(w.throttled) / float64(w.calls)
	if ep := p.episode; ep != nil && !w.start.Before(ep.start) && ep.throttled >= significantThrottling &&
		throttled >= notOurs*ep.throttled && w.ok > 0 {
		// A whole window at the lowered rate is throttled as much as
		// before, and calls still get through: the throttling is not
		// caused by this rate, and the lower rate only lowers what gets
		// through. (When nothing gets through, the quota is used up
		// elsewhere or gone, and the rate stays low.)
		p.setRate(now, ep.rate)
		p.episode = nil
		p.holdUntil = end.Add(holdWindows * pacerWindow)
		return
	}
	// Throttled, and lowering the rate helps or is untried: go just under
	// what got through.
	p.startEpisode(end, throttled)
	succeeded := float64(w.ok) / pacerWindow.Seconds()
	p.setRate(now, min(p.rate, succeeded*afterWindowDecrease))
	p.lastDecrease = end
}
