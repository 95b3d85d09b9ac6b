package upstream

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Pacer spaces the upstream calls of one gateway replica so that they stay
// within the account's API quota, which the gateway does not know: Alibaba
// Cloud answers Throttling.User past it. The pacer starts at its ceiling
// (--upstream-qps), without burst credit, and adapts to the answers in
// windows of half a second:
//
//   - The first throttle cuts the rate to 30% at once: the ceiling is too
//     high by an unknown amount, and every replica of a fresh deployment
//     would otherwise keep sending at it for a whole window.
//   - A throttled window lowers the rate in proportion to the calls
//     refused in it (taken over at least ten calls, so that a replica with
//     a small share is not cut in half by one unlucky throttle), to just
//     under what the quota let through.
//   - A window without throttles in which callers had to wait for the
//     pacer is clean; every second one raises the rate by a thirty-fifth
//     of the ceiling. Additive increase and multiplicative decrease:
//     replicas sharing a quota converge on it together, and towards equal
//     shares. A longer run of clean windows probes multiplicatively, ever
//     bolder, for room another replica left.
//   - Throttling that the rate does not change is not this replica's doing
//     (another client of the account, or a fault). Each series of
//     decreases is judged once enough calls went out at the lowered rate:
//     when the rate fell far, the throttled share barely, and what got
//     through fell with the rate (against a quota, what gets through stays
//     the quota), the pacer restores the rate it had before the
//     throttling began, and from then on takes windows throttled about as
//     much as that (the noise) for clean ones; the noise it tolerates
//     follows the throttling down as it wanes. Heavy throttling (more than
//     half the calls), throttling that grew, or nothing getting through at
//     all, is always taken to be the quota's.
//   - A throttle of a call sent before the rate was last lowered counts
//     for nothing: that decrease already answered it.
//   - With a shared budget ([WithSharedBudget]) the rate is the whole
//     deployment's: every replica spaces its calls in one budget at it.
//     The first throttle halves it, and there is no probing: no other
//     replica's room is left to find, and additive increase finds a quota
//     that grew. While the budget cannot be reached the pacer paces its
//     replica alone, at the rate it was sending at (its share).
//
// Calls go one slot every 1/rate (after a burst allowance), at the rate in
// force when their turn comes, and callers ([WithCaller]: a peer, a
// token) take turns: each round serves the oldest waiting call of every
// caller with calls waiting. A caller with a thousand streams open waits
// behind its own calls, not the others: another caller's call waits for
// about one call of each busy caller.
//
// On a simulated quota of 50 calls/s (pacer_test.go), one to three
// replicas that know nothing of each other settle at 50 calls/s with
// 3-5% of the calls throttled; five replicas settle on the quota too, but
// with about a third throttled: their probes collide more often. Random
// throttling of 30% or 40% of the calls keeps four fifths of the ceiling;
// at half the calls or more it is taken to be the quota's (a known limit:
// the pacer then sinks towards its floor). A Pacer is safe for
// concurrent use.
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
	tat time.Time
	// queues are the waiting calls of each caller, oldest first; turns the
	// callers with calls waiting, in turn order; next the caller whose
	// turn it is; queued the calls waiting in all.
	queues map[string][]*waiter
	// listServed: whether the last call served of each caller with calls
	// waiting was a List's ([WithInteractive]).
	listServed map[string]bool
	turns      []string
	next       int
	queued     int
	timerAt    time.Time   // when the armed timer fires; zero: none armed
	stop       func() bool // stops the armed timer

	sends        [32]time.Time // the latest send times, a ring
	nsends       int
	outcomes     [50]bool // whether each of the latest answers was a throttle, a ring
	noutcomes    int
	throttleSeen bool
	shared       bool      // the rate is the whole deployment's (a SharedBudget)
	sharedRate   float64   // the deployment's rate when the shared budget was lost
	cutAt        time.Time // when the rate was last lowered
	cleanRate    float64   // the rate of the last clean window (at first, the ceiling)

	win     window
	lastWin window // the last window that ended
	clean   int    // clean saturated windows in a row
	episode *episode
	// noise is the throttled share judged not to be this replica's doing
	// (0: none): windows throttled about as much count as clean.
	noise float64
}

// waiter is a waiting call; goAt is called once its slot comes.
type waiter struct {
	caller      string
	interactive bool // a List's call ([WithInteractive])
	goAt        func(at time.Time)
}

// place is where a call joins its caller's queue.
type place int

const (
	atBack        place = iota // a new call
	atHead                     // a retry: it has had its turn
	asInteractive              // a List's call: after the caller's other List calls, before its stream pages
)

// window counts what happened in one pacing window.
type window struct {
	start time.Time
	// calls answered, of which throttled and succeeded; calls sent, of
	// which waited for their slot.
	calls, throttled, ok, sent, waited int
}

// episode remembers the rate and throttling before a decrease, to restore
// the rate when lowering it did not help, and counts the answers to the
// calls sent since.
type episode struct {
	rate      float64   // before the decrease
	before    float64   // the throttled share of the latest answers before it
	sample    int       // how many answers that share is of
	succeeded float64   // calls/s that got through before it, by the rate
	start     time.Time // calls sent from here on went at the lowered rate
	// answers to calls sent since start
	calls, throttled, ok int
}

const (
	pacerWindow = 500 * time.Millisecond
	// heavyThrottling is the throttled share above which throttling is
	// always taken to be caused by the rate.
	heavyThrottling = 0.5
	// firstDecrease is what the first throttle multiplies the rate by: a
	// deployment of several replicas, each at its ceiling, is over the
	// quota by their number. With a shared budget the replicas together
	// go at one rate, and firstDecreaseShared does.
	firstDecrease       = 0.3
	firstDecreaseShared = 0.5
	// A throttled window multiplies the rate by the share of its calls
	// that got through and afterWindowDecrease, and by at least
	// minDecrease.
	afterWindowDecrease = 0.95
	minDecrease         = 0.5
	// cleanWindowsToIncrease saturated windows without a throttle raise the
	// rate by one step (additive: with the multiplicative decreases,
	// replicas sharing a quota converge to equal shares).
	cleanWindowsToIncrease = 2
	// After probeAfter clean saturated windows in a row, every further one
	// raises the rate by probeFactor times the windows of the streak
	// beyond it, by at most maxProbe.
	probeAfter  = 4
	probeFactor = 0.05
	maxProbe    = 1.5
	// notOurs: throttling after a series of decreases within this factor
	// of the throttling before it is "about as much".
	notOurs = 0.5
	// When throttling is not ours, a window throttled up to noiseMargin ×
	// that share plus noiseSlack counts as clean (a window's share is
	// taken over a few dozen calls: it varies), and each window at or
	// below the share moves the share noiseDecay of the way to it.
	noiseMargin = 1.3
	noiseSlack  = 0.05
	noiseDecay  = 0.1
	// proportional: what got through after a decrease fell "with the
	// rate" when it is below this multiple of the rate's fall; judgedFall
	// is how far the rate must have fallen for that to tell.
	proportional = 1.3
	judgedFall   = 0.6
	// significantThrottling is the least throttled share from which
	// "lowering did not help" is told apart from noise, and episodeCalls
	// the answers (to calls sent after a decrease) it is judged on.
	significantThrottling = 0.1
	episodeCalls          = 30
	// episodeFloor bounds the decreases of an episode until it is judged:
	// at most to this share of the rate before it, so that it is judged
	// soon, at a rate that still tells.
	episodeFloor = 0.25
	// minWindowCalls is the least number of calls a window's throttled
	// share is taken over.
	minWindowCalls = 10
	// minRate is the lowest rate the pacer goes down to, in calls/s.
	minRate = 0.5
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
	p := &Pacer{clock: clock, ceiling: max(ceiling, 0), burst: float64(max(burst, 1))}
	now := clock.Now()
	p.win.start = now
	if p.ceiling > 0 {
		// A fresh replica starts at its ceiling but without burst credit
		// (which accrues as calls go slower than the rate): replicas
		// starting together do not open with a burst each.
		p.rate = p.ceiling
		p.cleanRate = p.ceiling
		p.tat = now.Add(time.Duration((p.burst - 1) * float64(p.interval())))
	}
	return p
}

// Rate returns the current rate in calls per second; 0 means calls are not
// spaced.
func (p *Pacer) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rate
}

// Queued returns how many calls wait for their slot.
func (p *Pacer) Queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queued
}

// ErrPacingDeadline reports that a call's slot would come after its
// context's deadline; it wraps context.DeadlineExceeded.
var ErrPacingDeadline = fmt.Errorf("no upstream quota slot before the deadline: %w", context.DeadlineExceeded)

// Wait waits for the caller's slot and returns how long it waited. The
// caller is named by [WithCaller] (one queue for all unnamed callers).
// When the slot would come after ctx's deadline it fails at once with
// [ErrPacingDeadline]; when ctx ends while waiting it returns ctx's cause.
func (p *Pacer) Wait(ctx context.Context) (time.Duration, error) {
	return p.wait(ctx, false)
}

// waitRetry is Wait for the retry of a call that has already had its
// turn: it waits at the head of its caller's queue, not behind the
// caller's other calls, so that a page throttled a few times waits a few
// slots rather than a few rounds of every call its caller has queued, and
// a caller with many streams does not use up the max wait of its own
// throttled pages.
func (p *Pacer) waitRetry(ctx context.Context) (time.Duration, error) {
	return p.wait(ctx, true)
}

func (p *Pacer) wait(ctx context.Context, retry bool) (time.Duration, error) {
	if ctx.Err() != nil {
		return 0, context.Cause(ctx)
	}
	p.mu.Lock()
	start := p.clock.Now()
	now := p.takeFree(start)
	p.mu.Unlock()
	if now {
		// Went at once, without the channel and the waiter a queued call
		// needs: an unpaced client's every call goes this way.
		return 0, nil
	}
	deadline, _ := ctx.Deadline()
	slot := make(chan time.Time, 1)
	at := atBack
	switch {
	case retry:
		at = atHead
	case interactive(ctx):
		at = asInteractive
	}
	w, ok := p.enqueueAt(callerFrom(ctx), deadline, at, func(at time.Time) { slot <- at })
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

// callerKey names the caller of an upstream call in its context.
type callerKey struct{}

// WithCaller names the caller (a peer, a token) an upstream call is made
// for: the [Pacer] takes callers in turns, so that a caller with many
// calls waiting cannot keep the others waiting behind all of them.
func WithCaller(ctx context.Context, caller string) context.Context {
	return context.WithValue(ctx, callerKey{}, caller)
}

// interactiveKey marks an upstream call that a caller waits on as a
// whole (a unary List), in its context.
type interactiveKey struct{}

// WithInteractive marks an upstream call as one a caller waits on as a
// whole, a unary List: the [Pacer] queues it before its caller's stream
// pages, so that a List is not held behind the backlog of its own
// caller's streams, and the caller's turns alternate between its List
// calls and its other calls, so that a caller listing back to back does
// not starve its own streams. Other callers keep their turns.
func WithInteractive(ctx context.Context) context.Context {
	return context.WithValue(ctx, interactiveKey{}, true)
}

func interactive(ctx context.Context) bool {
	i, _ := ctx.Value(interactiveKey{}).(bool)
	return i
}

func callerFrom(ctx context.Context) string {
	c, _ := ctx.Value(callerKey{}).(string)
	return c
}

// enqueue queues a call of caller whose slot calls goAt. A call that may
// go at once gets goAt called before enqueue returns, and a nil waiter. ok
// is false, and nothing is queued, when the slot would come after
// deadline.
func (p *Pacer) enqueue(caller string, deadline time.Time, goAt func(time.Time)) (_ *waiter, ok bool) {
	return p.enqueueAt(caller, deadline, atBack, goAt)
}

// enqueueAt is enqueue, at place in the caller's queue.
func (p *Pacer) enqueueAt(caller string, deadline time.Time, at place, goAt func(time.Time)) (_ *waiter, ok bool) {
	p.mu.Lock()
	now := p.clock.Now()
	if p.takeFree(now) {
		p.mu.Unlock()
		goAt(now)
		return nil, true
	}
	if !deadline.IsZero() && p.estimate(now, p.ahead(caller, at)).After(deadline) {
		p.mu.Unlock()
		return nil, false
	}
	w := &waiter{caller: caller, interactive: at == asInteractive, goAt: goAt}
	if len(p.queues[caller]) == 0 {
		p.turns = append(p.turns, caller)
	}
	if p.queues == nil {
		p.queues = map[string][]*waiter{}
	}
	q := p.queues[caller]
	switch at {
	case atHead:
		p.queues[caller] = slices.Insert(q, 0, w)
	case asInteractive:
		i := 0
		for i < len(q) && q[i].interactive {
			i++
		}
		p.queues[caller] = slices.Insert(q, i, w)
	default:
		p.queues[caller] = append(q, w)
	}
	p.queued++
	p.arm(now)
	p.mu.Unlock()
	return w, true
}

// takeFree takes a slot at now for a call that may go at once: no call is
// queued and the pacer has a slot free. p.mu is held.
func (p *Pacer) takeFree(now time.Time) bool {
	p.roll(now)
	if p.queued == 0 && p.free(now) {
		p.send(now, false)
		return true
	}
	return false
}

// ahead is how many calls would go before a call of caller that joins
// its queue at place at: each round of turns serves one call of every
// caller with calls waiting, so it waits for the caller's calls ahead of
// it, and for as many of every other caller's.
func (p *Pacer) ahead(caller string, at place) int {
	q := p.queues[caller]
	mine := 0 // the caller's calls that go before it
	switch at {
	case atBack:
		mine = len(q)
	case asInteractive:
		// Its List calls, each after one of its other calls while it has
		// them: its turns alternate.
		lists := 0
		for _, w := range q {
			if w.interactive {
				lists++
			}
		}
		mine = lists + min(lists, len(q)-lists)
	}
	n := mine
	for c, other := range p.queues {
		if c != caller {
			n += min(len(other), mine+1)
		}
	}
	return n
}

// cancel takes w out of its queue; false means its slot came already.
func (p *Pacer) cancel(w *waiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := p.queues[w.caller]
	i := slices.Index(q, w)
	if i < 0 {
		return false
	}
	p.queues[w.caller] = slices.Delete(q, i, i+1)
	p.queued--
	if len(p.queues[w.caller]) == 0 {
		p.dropTurn(w.caller)
	}
	return true
}

// dropTurn takes caller, whose queue is empty, out of the turns.
func (p *Pacer) dropTurn(caller string) {
	delete(p.queues, caller)
	delete(p.listServed, caller)
	i := slices.Index(p.turns, caller)
	p.turns = slices.Delete(p.turns, i, i+1)
	if p.next > i {
		p.next--
	}
	if p.next >= len(p.turns) {
		p.next = 0
	}
}

// pop takes the next waiting call, the callers taking turns. A caller
// whose last call served was a List's serves its oldest other call
// first, when it has one: its turns alternate between the two.
func (p *Pacer) pop() *waiter {
	caller := p.turns[p.next]
	q := p.queues[caller]
	i := 0
	if q[0].interactive && p.listServed[caller] {
		if j := slices.IndexFunc(q, func(w *waiter) bool { return !w.interactive }); j > 0 {
			i = j
		}
	}
	w := q[i]
	if p.listServed == nil {
		p.listServed = map[string]bool{}
	}
	p.listServed[caller] = w.interactive
	p.queues[caller] = slices.Delete(q, i, i+1)
	p.queued--
	if len(q) == 1 {
		p.dropTurn(caller)
	} else {
		p.next = (p.next + 1) % len(p.turns)
	}
	return w
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

// arm makes the timer fire when the next waiting call may go.
func (p *Pacer) arm(now time.Time) {
	if p.queued == 0 {
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
	for p.queued > 0 && p.free(now) {
		ready = append(ready, p.pop())
		p.send(now, true)
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

// setShared tells the pacer that its rate is that of every replica
// together: a SharedBudget spaces their calls at it.
func (p *Pacer) setShared() {
	p.mu.Lock()
	p.shared = true
	p.mu.Unlock()
}

// leaveShared tells the pacer that the shared budget cannot be reached:
// it paces this replica alone, and its rate, the whole deployment's until
// now, becomes this replica's share of it, the rate it has been sending
// at. rejoinShared goes back to the deployment's rate, as it stood then.
func (p *Pacer) leaveShared() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.shared {
		return
	}
	now := p.clock.Now()
	p.shared = false
	p.sharedRate = p.rate
	p.clean = 0 // clean windows on the budget say nothing of room alone
	if p.rate > 0 {
		p.setRate(now, min(p.rate, p.sendRate(now)))
		// No burst credit: the budget held the calls, not this pacer.
		p.tat = later(p.tat, now.Add(time.Duration((p.burst-1)*float64(p.interval()))))
	}
}

// rejoinShared tells the pacer that the shared budget answers again; see
// leaveShared.
func (p *Pacer) rejoinShared() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shared {
		return
	}
	p.shared = true
	if p.sharedRate > 0 {
		p.setRate(p.clock.Now(), p.sharedRate)
	}
}

// noteWaited counts a call of this window that had to wait for the shared
// budget: the pacer's rate was what held it, as when it waits here.
func (p *Pacer) noteWaited() {
	p.mu.Lock()
	p.win.waited++
	p.mu.Unlock()
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
	throttle := o == Throttled
	if throttle && sent.Before(p.cutAt) {
		return // sent at a rate lowered since: that decrease answered it
	}
	p.win.calls++
	if throttle {
		p.win.throttled++
	} else {
		p.win.ok++
	}
	p.outcomes[p.noutcomes%len(p.outcomes)] = throttle
	p.noutcomes++
	if ep := p.episode; ep != nil && !sent.Before(ep.start) {
		ep.calls++
		if throttle {
			ep.throttled++
		} else {
			ep.ok++
		}
	}
	if throttle && !p.throttleSeen {
		// The first throttle: the rate the pacer started with is too
		// high, by how much is not known yet. Cut it at once, rather than
		// wait for the evidence to pile up while every replica of a fresh
		// deployment keeps sending.
		p.throttleSeen = true
		if p.rate <= 0 { // no ceiling: start from the rate calls were sent at
			p.rate = p.sendRate(now)
			p.cleanRate = p.rate
			p.tat = now
		}
		p.startEpisode(now)
		cut := firstDecrease
		if p.shared {
			cut = firstDecreaseShared
		}
		p.setRate(now, p.rate*cut)
	}
}

// throttledShare is the throttled share of the latest answers.
func (p *Pacer) throttledShare() float64 { return p.latestShare(len(p.outcomes)) }

// latestShare is the throttled share of the latest n answers (fewer when
// there are fewer).
func (p *Pacer) latestShare(n int) float64 {
	n = min(n, p.noutcomes, len(p.outcomes))
	if n == 0 {
		return 0
	}
	t := 0
	for i := range n {
		if p.outcomes[(p.noutcomes-1-i)%len(p.outcomes)] {
			t++
		}
	}
	return float64(t) / float64(n)
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

// startEpisode remembers the rate and throttling before a decrease, unless
// an episode of decreases is being judged already.
func (p *Pacer) startEpisode(at time.Time) {
	if p.episode == nil {
		// What got through before: the rate less its throttled share.
		succeeded := p.rate * (1 - p.throttledShare())
		p.episode = &episode{rate: p.rate, before: p.throttledShare(), sample: min(p.noutcomes, len(p.outcomes)), succeeded: succeeded, start: at}
	}
}

// floor is how low decreases may take the rate before the episode is
// judged: a quarter of the rate before it, unless the throttling is heavy
// (heavy throttling is never judged "not ours", so it has no use for a
// rate that still tells).
func (p *Pacer) floor() float64 {
	if ep := p.episode; ep != nil && ep.before <= heavyThrottling && p.throttledShare() <= heavyThrottling {
		return ep.rate * episodeFloor
	}
	return 0
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
	if r < p.rate {
		p.cutAt = now
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
		p.lastWin = p.win
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
	if ep := p.episode; ep != nil && ep.calls >= episodeCalls && !w.start.Before(ep.start) {
		p.judge(now, end, ep, w)
	}
	if w.throttled == 0 {
		p.cleanRate = p.rate
	}
	share := float64(w.throttled) / float64(max(w.calls, minWindowCalls))
	tolerated := p.noise > 0 && share <= p.noise*noiseMargin+noiseSlack
	if p.noise > 0 && share <= p.noise {
		// Throttling that is not ours wanes: so does what is tolerated.
		p.noise = p.noise*(1-noiseDecay) + share*noiseDecay
	}
	if w.throttled == 0 || tolerated {
		// Clean, or throttled by what is not ours: room to grow.
		saturated := w.waited*4 >= w.sent && w.sent > 0
		if !saturated || (p.ceiling > 0 && p.rate >= p.ceiling) {
			p.clean = 0
			return
		}
		p.clean++
		switch {
		case p.clean >= probeAfter && !p.shared:
			// Clean for a while: there is room (another replica went
			// quiet, or the quota grew). Probe multiplicatively.
			// The longer the streak, the bolder the probe.
			factor := min(1+probeFactor*float64(p.clean-probeAfter+1), maxProbe)
			p.setRate(now, max(p.rate*factor, p.rate+p.step()))
		case p.clean%cleanWindowsToIncrease == 0:
			p.setRate(now, p.rate+p.step())
		}
		return
	}
	p.clean = 0
	// Throttled: lower the rate in proportion to what was refused, to just
	// under what got through.
	// Over at least a few calls: a replica with a small share of the
	// quota sends few calls a window, and one throttle among two must not
	// halve its rate (it would never get its share back).
	p.startEpisode(end)
	if r := max(p.rate*max(minDecrease, (1-share)*afterWindowDecrease), p.floor()); r < p.rate {
		p.setRate(now, r)
	}
}

// judge decides, once enough calls were sent after the decreases of
// episode ep, whether they were right: whether the throttling is caused by
// the rate. w is the window that just ended, at the lowered rate.
func (p *Pacer) judge(now, end time.Time, ep *episode, w window) {
	after := float64(ep.throttled) / float64(ep.calls) // since the decrease
	switch {
	case ep.before < significantThrottling || ep.sample < episodeCalls:
		// Too little known from before to compare: the decrease stands.
		p.episode = nil
	case ep.before > heavyThrottling || after > heavyThrottling || after > ep.before/notOurs || ep.ok == 0:
		// Heavy throttling, or throttling that grew although the rate
		// fell (other replicas took the room), or nothing gets through
		// (the quota is used up elsewhere, or gone): whatever its cause,
		// the rate must stay down. (Replicas sharing a quota, lowering at
		// different moments, could also take each other's share for a
		// sign that the throttling is not theirs: not when it is heavy.)
		p.episode = nil
	case after < notOurs*ep.before:
		p.episode = nil // lowering helped: the decrease stands
	case p.rate/ep.rate > judgedFall:
		// About as throttled as before, but the rate has not fallen far
		// enough yet for what gets through to tell: keep lowering.
	case float64(w.ok)/pacerWindow.Seconds() < proportional*(p.rate/ep.rate)*ep.succeeded:
		// The rate fell far, the throttling barely, and what gets
		// through fell with the rate: the throttling is not caused by
		// this rate (against a quota, what gets through stays the
		// quota), and the lower rate only lowers what gets through.
		p.setRate(now, max(ep.rate, p.cleanRate))
		p.noise = max(after, ep.before)
		p.episode = nil
	default:
		p.episode = nil // what gets through held up: the quota's
	}
}

// step is the additive increase after clean windows: a thirty-fifth of
// the ceiling (without a ceiling, of the current rate).
func (p *Pacer) step() float64 {
	ref := p.ceiling
	if ref <= 0 {
		ref = p.rate
	}
	return max(minRate/2, ref/35)
}
