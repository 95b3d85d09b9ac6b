package upstream

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The pacer on a fake clock: replicas of the gateway, each with its own
// Pacer and callers that call back to back, against an account quota (a
// token bucket, as Alibaba Cloud's flow control is), in a discrete-event
// simulation. No real time passes.

// quotaBucket is the upstream's flow control: qps tokens a second, burst
// at most; a call without a token is throttled.
type quotaBucket struct {
	qps, burst float64
	tokens     float64
	last       time.Time
}

func (q *quotaBucket) take(at time.Time) bool {
	if !q.last.IsZero() {
		q.tokens = min(q.burst, q.tokens+at.Sub(q.last).Seconds()*q.qps)
	}
	q.last = at
	if q.tokens >= 1 {
		q.tokens--
		return true
	}
	return false
}

// event is something that happens at a virtual time.
type event struct {
	at  time.Time
	seq int
	do  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	return q[i].at.Before(q[j].at) || q[i].at.Equal(q[j].at) && q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// quotaWorld is the simulation.
type quotaWorld struct {
	now    time.Time
	queue  eventQueue
	seq    int
	quota  *quotaBucket
	rng    *rand.Rand
	faults float64 // fraction of calls throttled at random, whatever the rate

	pacers []*Pacer
	// counted after warmUp: calls answered, throttled, and succeeded
	warmUp                    time.Duration
	start                     time.Time
	calls, throttled, success int
}

func (w *quotaWorld) at(t time.Time, do func()) {
	w.seq++
	heap.Push(&w.queue, &event{at: t, seq: w.seq, do: do})
}

// Now and AfterFunc make the world the pacers' clock.
func (w *quotaWorld) Now() time.Time { return w.now }

func (w *quotaWorld) AfterFunc(d time.Duration, f func()) func() bool {
	stopped := false
	w.at(w.now.Add(d), func() {
		if !stopped {
			f()
		}
	})
	return func() bool { was := !stopped; stopped = true; return was }
}

// caller calls through p back to back: wait for a slot, the call takes
// latency, the answer is observed, and the next call is made at once.
func (w *quotaWorld) caller(p *Pacer, latency time.Duration) {
	var call func()
	call = func() {
		p.enqueue("", time.Time{}, func(time.Time) { w.send(p, latency, call) })
	}
	w.at(w.now, call)
}

// send makes one call now, halfway through latency it meets the quota
// (and the random faults), the answer is observed by p, counted, and then
// makes next.
func (w *quotaWorld) send(p *Pacer, latency time.Duration, next func()) {
	sent := w.now
	w.at(sent.Add(latency/2), func() {
		ok := w.quota.take(w.now) && !(w.faults > 0 && w.rng.Float64() < w.faults)
		w.at(w.now.Add(latency/2), func() {
			outcome := Succeeded
			if !ok {
				outcome = Throttled
			}
			p.Observe(sent, outcome)
			if w.now.Sub(w.start) >= w.warmUp {
				w.calls++
				if ok {
					w.success++
				} else {
					w.throttled++
				}
			}
			next()
		})
	})
}

func (w *quotaWorld) run(d time.Duration) {
	end := w.now.Add(d)
	for w.queue.Len() > 0 {
		if w.queue[0].at.After(end) {
			w.now = end
			return
		}
		e := heap.Pop(&w.queue).(*event)
		w.now = e.at
		e.do()
	}
}

func newQuotaWorld(qps, burst float64) *quotaWorld {
	w := &quotaWorld{now: time.Unix(1_700_000_000, 0), quota: &quotaBucket{qps: qps, burst: burst, tokens: burst}, rng: rand.New(rand.NewPCG(1, 2))}
	w.start = w.now
	return w
}

func (w *quotaWorld) newPacer(ceiling float64, burst int) *Pacer {
	p := newPacer(ceiling, burst, w)
	w.pacers = append(w.pacers, p)
	return p
}

// holds fails t unless the calls counted over seconds got through at
// within [lo, hi] × quota calls/s with at most maxThrottled of them
// throttled; it logs the figures, as what.
func (w *quotaWorld) holds(t *testing.T, what string, seconds, quota, lo, hi, maxThrottled float64) {
	t.Helper()
	rate := float64(w.success) / seconds
	throttled := float64(w.throttled) / float64(w.calls)
	t.Logf("%s: %.1f calls/s got through (quota %.0f), %.1f%% of %d calls throttled", what, rate, quota, 100*throttled, w.calls)
	if rate < lo*quota || rate > hi*quota {
		t.Errorf("%s: %.1f calls/s got through, want within [%.0f, %.0f]", what, rate, lo*quota, hi*quota)
	}
	if throttled > maxThrottled {
		t.Errorf("%s: %.1f%% of calls throttled, want at most %.0f%%", what, 100*throttled, 100*maxThrottled)
	}
}

// TestPacersConvergeOnTheQuota: N replicas at the default ceiling (100/s,
// burst 20) that know nothing of each other share a quota of 50 calls/s
// (burst 10) with 10 ms calls; together they settle within 0.8..1.1 of the
// quota with at most 10% of the calls throttled. (Five replicas settle on
// the quota too, but with about 20% throttled: their probes for room
// collide more often.)
func TestPacersConvergeOnTheQuota(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			t.Parallel()
			const quota = 50
			w := newQuotaWorld(quota, 10)
			w.warmUp = 5 * time.Second
			for range replicas {
				p := w.newPacer(100, 20)
				for range 10 { // ten streams per replica, one call in flight each
					w.caller(p, 10*time.Millisecond)
				}
			}
			const d = 65 * time.Second
			w.run(d)
			w.holds(t, fmt.Sprintf("%d replicas", replicas), (d - w.warmUp).Seconds(), quota, 0.8, 1.1, 0.10)
		})
	}
}

// sharedGCRA is a budget every replica shares, as redis_rate keeps it in
// Redis (GCRA, burst 1): a call may go once the budget's theoretical
// arrival time has come, and moves it on by one interval at the rate its
// own pacer asks for.
// While down, the budget cannot be reached and lets every call go.
type sharedGCRA struct {
	tat  time.Time
	down bool
}

func (g *sharedGCRA) take(now time.Time, rate float64) (wait time.Duration) {
	if g.down {
		return 0
	}
	if now.Before(g.tat) {
		return g.tat.Sub(now)
	}
	g.tat = now.Add(time.Duration(float64(time.Second) / rate))
	return 0
}

// sharedCaller is caller with a shared budget between the pacer and the
// upstream, as Client.takeShared puts it: each question to the budget
// takes a round trip of rtt, a caller told to wait wakes up late (timers
// on a busy machine), and one held by a budget that is then lost takes a
// turn with the pacer before it goes.
func (w *quotaWorld) sharedCaller(p *Pacer, g *sharedGCRA, latency, rtt, late time.Duration) {
	var call func()
	call = func() {
		var ask func(held bool)
		ask = func(held bool) {
			w.at(w.now.Add(rtt/2), func() {
				down, wait := g.down, g.take(w.now, p.Rate())
				w.at(w.now.Add(rtt/2), func() {
					switch {
					case down && held: // a turn with the pacer alone first
						p.enqueueAt("", time.Time{}, atHead, func(time.Time) { w.send(p, latency, call) })
					case wait > 0:
						p.noteWaited()
						w.at(w.now.Add(wait+late), func() { ask(true) })
					default:
						w.send(p, latency, call)
					}
				})
			})
		}
		p.enqueue("", time.Time{}, func(time.Time) { ask(false) })
	}
	w.at(w.now, call)
}

// sharedReplicas starts n replicas at the default ceiling on the budget
// g, each with ten callers: 10 ms calls, a round trip of 500 µs to the
// budget, waits that wake up 1 ms late.
func (w *quotaWorld) sharedReplicas(n int, g *sharedGCRA) {
	for range n {
		p := w.newPacer(100, 20)
		p.setShared()
		for range 10 {
			w.sharedCaller(p, g, 10*time.Millisecond, 500*time.Microsecond, time.Millisecond)
		}
	}
}

// TestSharedPacersConvergeOnTheQuota: replicas at the default ceiling
// that share one budget (--quota-redis) live within the quota from their
// first call on, with at most 3% of the calls throttled, although each
// question to the budget takes a round trip and waits wake up late.
func TestSharedPacersConvergeOnTheQuota(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 3, 5} {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			t.Parallel()
			const quota = 50
			w := newQuotaWorld(quota, 10)
			w.sharedReplicas(replicas, &sharedGCRA{})
			const d = 12 * time.Second // the quota scenario's floor, no warm-up
			w.run(d)
			w.holds(t, fmt.Sprintf("%d replicas, one budget", replicas), d.Seconds(), quota, 0.9, 1.1, 0.03)
		})
	}
}

// TestPacersPaceAloneWhenTheSharedBudgetIsLost: three replicas on one
// budget lose it (Redis died); each goes on at its share of the
// deployment's rate, not at the whole of it, so the quota is not hit
// three times over: in the 5 s after the loss, at most 10% of the calls
// are throttled and 0.8× the quota still gets through (47% throttled
// when each went on at the deployment's rate). When the budget is back,
// the pacers go back to the deployment's rate.
func TestPacersPaceAloneWhenTheSharedBudgetIsLost(t *testing.T) {
	t.Parallel()
	const quota = 50
	w := newQuotaWorld(quota, 10)
	g := &sharedGCRA{}
	w.sharedReplicas(3, g)
	w.run(6 * time.Second)
	deployment := w.pacers[0].Rate()
	g.down = true
	for _, p := range w.pacers {
		p.leaveShared()
	}
	w.calls, w.success, w.throttled = 0, 0, 0 // count from the loss on
	w.run(5 * time.Second)
	w.holds(t, fmt.Sprintf("budget lost at a deployment rate of %.1f/s", deployment), 5, quota, 0.8, 1.1, 0.10)
	g.down = false
	for _, p := range w.pacers {
		p.rejoinShared()
	}
	if r := w.pacers[0].Rate(); r < 0.7*quota {
		t.Errorf("back on the budget at %.1f calls/s, want the deployment's rate (about %d), not one replica's share", r, quota)
	}
}

// TestPacerIgnoresThrottlingItDoesNotCause: throttling at a fixed share
// whatever the rate (another client of the account, injected faults) must
// not drive the rate down for nothing: with 30% or 40% of the calls
// throttled at random and no quota, the pacer keeps most of its ceiling
// for two minutes, not only until its first judgement runs out.
func TestPacerIgnoresThrottlingItDoesNotCause(t *testing.T) {
	t.Parallel()
	for _, share := range []float64{0.3, 0.4} {
		t.Run(fmt.Sprintf("throttled=%.0f%%", 100*share), func(t *testing.T) {
			t.Parallel()
			w := newQuotaWorld(1e9, 1e9) // no quota to speak of
			w.faults = share
			w.warmUp = 5 * time.Second
			p := w.newPacer(100, 20)
			for range 20 {
				w.caller(p, 2*time.Millisecond)
			}
			const d = 125 * time.Second
			w.run(d)
			rate := float64(w.calls) / (d - w.warmUp).Seconds()
			t.Logf("%.1f calls/s with %.0f%% random throttling (ceiling 100)", rate, 100*share)
			if rate < 60 {
				t.Errorf("%.1f calls/s: random throttling drove the rate down, want most of the ceiling of 100", rate)
			}
		})
	}
}

// TestPacerWithoutCeilingLearnsTheQuota: --upstream-qps 0 spaces nothing
// until the first throttle, then paces from the rate it saw.
func TestPacerWithoutCeilingLearnsTheQuota(t *testing.T) {
	t.Parallel()
	const quota = 50
	w := newQuotaWorld(quota, 10)
	w.warmUp = 5 * time.Second
	p := w.newPacer(0, 20)
	for range 10 {
		w.caller(p, 10*time.Millisecond)
	}
	w.run(35 * time.Second)
	w.holds(t, "no ceiling", 30, quota, 0.8, 1.1, 0.10)
}

// TestPacerSpacesCallsFairly: callers go in arrival order at the rate,
// after the burst; one whose slot would come after its deadline is refused
// at once and takes no slot.
func TestPacerSpacesCallsFairly(t *testing.T) {
	t.Parallel()
	w := newQuotaWorld(1e9, 1e9)
	p := newPacer(10, 3, w)
	p.rate, p.tat = 10, w.now // past slow start, with its burst credit
	var got []string
	for i := range 6 {
		p.enqueue("", time.Time{}, func(at time.Time) { got = append(got, fmt.Sprintf("%d@%v", i, at.Sub(w.start))) })
	}
	if _, ok := p.enqueue("", w.now.Add(350*time.Millisecond), func(time.Time) { t.Error("a caller refused for its deadline went") }); ok {
		t.Error("a slot 400 ms away was given to a caller with 350 ms left")
	}
	p.enqueue("", time.Time{}, func(at time.Time) { got = append(got, fmt.Sprintf("6@%v", at.Sub(w.start))) })
	w.run(time.Second)
	want := []string{"0@0s", "1@0s", "2@0s", "3@100ms", "4@200ms", "5@300ms", "6@400ms"}
	if !slices.Equal(got, want) {
		t.Errorf("slots %q, want %q: a burst of 3, then one every 100 ms, in order", got, want)
	}
}

// TestPacerStaysLowWhenNothingGetsThrough: an account whose quota is used
// up elsewhere (every call throttled) is not hammered: the rate falls
// towards the floor and stays within 2% of the ceiling.
func TestPacerStaysLowWhenNothingGetsThrough(t *testing.T) {
	t.Parallel()
	w := newQuotaWorld(1e9, 1e9)
	w.faults = 1
	w.warmUp = 5 * time.Second
	p := w.newPacer(100, 20)
	for range 10 {
		w.caller(p, 10*time.Millisecond)
	}
	w.run(35 * time.Second)
	if rate := float64(w.calls) / 30; rate > 2 {
		t.Errorf("%.1f calls/s against an upstream that throttles every call, want at most 2%% of the ceiling of 100/s", rate)
	}
}

// turns is a pacer at 10 calls/s, burst 1, past its slow start, on a
// clock without a quota, and the order in which queued calls got their
// slots.
type turns struct {
	w     *quotaWorld
	p     *Pacer
	order []string
}

func newTurns() *turns {
	w := newQuotaWorld(1e9, 1e9)
	p := newPacer(10, 1, w)
	p.rate, p.tat = 10, w.now
	return &turns{w: w, p: p}
}

// queue queues a call of caller at place at, named name in the order; it
// fails t when the call is refused for its deadline.
func (tr *turns) queue(t *testing.T, caller, name string, at place) {
	t.Helper()
	if _, ok := tr.p.enqueueAt(caller, time.Time{}, at, func(time.Time) { tr.order = append(tr.order, name) }); !ok {
		t.Fatal("refused without a deadline")
	}
}

// flood queues n calls of caller, named caller-0 onwards.
func (tr *turns) flood(t *testing.T, caller string, n int) {
	t.Helper()
	for i := range n {
		tr.queue(t, caller, fmt.Sprintf("%s-%d", caller, i), atBack)
	}
}

// TestPacerTakesCallersInTurns: a caller with a hundred calls waiting does
// not keep another caller's call waiting behind them, and a deadline is
// judged by the calls really ahead.
func TestPacerTakesCallersInTurns(t *testing.T) {
	t.Parallel()
	tr := newTurns()
	tr.flood(t, "flood", 100)
	quiet := time.Time{}
	// Two slots away (the flood's first call went at once, its second is
	// next in turn): it fits a deadline of 250 ms at 10 calls/s.
	if _, ok := tr.p.enqueue("quiet", tr.w.now.Add(250*time.Millisecond), func(at time.Time) {
		tr.order = append(tr.order, "quiet")
		quiet = at
	}); !ok {
		t.Fatal("the quiet caller's call was refused for a deadline its turn meets")
	}
	tr.w.run(time.Second)
	if i := slices.Index(tr.order, "quiet"); i < 0 || i > 2 || quiet.Sub(tr.w.start) > 200*time.Millisecond {
		t.Errorf("the quiet caller's call went %dth, after %v (%q): want within two slots, not behind the flood", i+1, quiet.Sub(tr.w.start), tr.order[:min(len(tr.order), 5)])
	}
	if _, ok := tr.p.enqueue("flood", tr.w.now.Add(time.Second), func(time.Time) {}); ok {
		t.Error("a flood call behind ~90 of its own at 10/s was accepted with 1 s left")
	}
}

// TestPacerRetryKeepsItsCallersTurn: the retry of a call that has had its
// turn waits at the head of its caller's queue, not behind the caller's
// hundred other calls, while another caller still gets its turn.
func TestPacerRetryKeepsItsCallersTurn(t *testing.T) {
	t.Parallel()
	tr := newTurns()
	tr.flood(t, "flood", 100)
	tr.queue(t, "quiet", "quiet", atBack)
	tr.queue(t, "flood", "flood-retry", atHead)
	tr.w.run(time.Second)
	if i := slices.Index(tr.order, "flood-retry"); i < 0 || i > 3 {
		t.Errorf("the flood's retry went %dth (0: not within a second; first slots %q): want within its caller's next turn, not behind its 99 other calls", i+1, tr.order[:min(len(tr.order), 6)])
	}
	if i := slices.Index(tr.order, "quiet"); i < 0 || i > 3 {
		t.Errorf("the quiet caller's call went %dth (0: not within a second; first slots %q): a retry must not take the other callers' turns", i+1, tr.order[:min(len(tr.order), 6)])
	}
}

// TestPacerServesListsBetweenTheirCallersStreamPages: a caller's List
// calls go before its queued stream pages, but its turns alternate
// between the two, so that listing back to back cannot starve its own
// streams.
func TestPacerServesListsBetweenTheirCallersStreamPages(t *testing.T) {
	t.Parallel()
	tr := newTurns()
	tr.flood(t, "page", 6)
	for i := range 3 {
		tr.queue(t, "page", fmt.Sprintf("list%d", i), asInteractive)
	}
	tr.w.run(time.Second)
	want := []string{"page-0", "list0", "page-1", "list1", "page-2", "list2", "page-3", "page-4", "page-5"}
	if !slices.Equal(tr.order, want) {
		t.Errorf("slots in the order %q, want %q: page-0 went at once, then Lists and pages take turns", tr.order, want)
	}
}
