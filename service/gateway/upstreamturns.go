package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/imagerecords/imagerecords/upstream"
)

// upstreamTurns admits upstream calls at the upstream rate in turns, one
// peer after another. The client's rate limit serves the calls waiting for
// it in the order they came, so a caller that opens a thousand streams
// (each fetching its first page and one more) would queue ten seconds of
// the whole budget ahead of everyone else. Here, while calls come faster
// than the rate, they wait in a queue per peer, and each time the rate
// allows a call the next peer in turn sends its oldest one: another
// peer's call waits for about one call of each busy peer, however many the
// busiest has queued. Admitted calls then find the client's limit free.
//
// A call whose peer has more calls queued ahead of it than the rate can
// admit before its deadline fails at once with DeadlineExceeded. At most
// maxRunning calls are under way at once (two seconds of the rate), so
// that an upstream that slows down cannot make the admitted calls pile up
// in the client's limit.
type upstreamTurns struct {
	api        upstream.API
	qps        float64
	pace       *rate.Limiter
	maxRunning int

	mu          sync.Mutex
	running     int
	queues      map[string][]*turn // peer → its waiting calls, oldest first
	order       []string           // peers with waiting calls, in turn order
	next        int                // index in order of the peer whose turn is next
	dispatching bool               // a dispatch goroutine admits the queued calls
	freed       chan struct{}      // a running call ended (buffered, 1)
}

// turn is one waiting call.
type turn struct {
	ready   chan struct{}
	granted bool
}

func newUpstreamTurns(api upstream.API, qps float64, burst int) *upstreamTurns {
	return &upstreamTurns{
		api:        api,
		qps:        qps,
		pace:       rate.NewLimiter(rate.Limit(qps), max(burst, 1)),
		maxRunning: max(burst, int(2*qps), 1),
		queues:     map[string][]*turn{},
		freed:      make(chan struct{}, 1),
	}
}

// DescribeImageModifiedRecords waits for the caller's turn, then calls the
// upstream.
func (u *upstreamTurns) DescribeImageModifiedRecords(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	if err := u.acquire(ctx, callerFrom(ctx).peer); err != nil {
		return nil, err
	}
	defer u.release()
	return u.api.DescribeImageModifiedRecords(ctx, in)
}

func (u *upstreamTurns) acquire(ctx context.Context, peer string) error {
	u.mu.Lock()
	if len(u.order) == 0 && u.running < u.maxRunning && u.pace.Allow() {
		u.running++
		u.mu.Unlock()
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		// The calls of this peer ahead of this one go first, at the rate
		// at most.
		least := time.Duration(float64(len(u.queues[peer])+1) / u.qps * float64(time.Second))
		if time.Until(deadline) < least {
			u.mu.Unlock()
			return fmt.Errorf("waiting for a turn at the upstream rate limit would take at least %v, past the deadline: %w", least, context.DeadlineExceeded)
		}
	}
	t := &turn{ready: make(chan struct{})}
	if len(u.queues[peer]) == 0 {
		u.order = append(u.order, peer)
	}
	u.queues[peer] = append(u.queues[peer], t)
	if !u.dispatching {
		u.dispatching = true
		go u.dispatch()
	}
	u.mu.Unlock()

	select {
	case <-t.ready:
		return nil
	case <-ctx.Done():
	}
	u.mu.Lock()
	granted := t.granted
	if !granted {
		u.remove(peer, t)
	}
	u.mu.Unlock()
	if granted {
		u.release() // granted as ctx ended
	}
	return fmt.Errorf("waiting for a turn at the upstream rate limit: %w", context.Cause(ctx))
}

// dispatch admits the queued calls, one peer after another, as the rate
// and the running bound allow; it ends when the queues are empty.
func (u *upstreamTurns) dispatch() {
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		if d := u.pace.Reserve().Delay(); d > 0 {
			timer.Reset(d)
			<-timer.C
		}
		u.mu.Lock()
		for u.running >= u.maxRunning && len(u.order) > 0 {
			u.mu.Unlock()
			<-u.freed
			u.mu.Lock()
		}
		if len(u.order) == 0 {
			u.dispatching = false
			u.mu.Unlock()
			return
		}
		u.grantNext()
		u.mu.Unlock()
	}
}

// grantNext admits the oldest call of the peer whose turn it is. u.mu is
// held and a call is waiting.
func (u *upstreamTurns) grantNext() {
	if u.next >= len(u.order) {
		u.next = 0
	}
	peer := u.order[u.next]
	q := u.queues[peer]
	t := q[0]
	if len(q) == 1 {
		delete(u.queues, peer)
		u.order = append(u.order[:u.next], u.order[u.next+1:]...) // next now names the peer after
	} else {
		u.queues[peer] = q[1:]
		u.next++
	}
	u.running++
	t.granted = true
	close(t.ready)
}

// release ends a running call.
func (u *upstreamTurns) release() {
	u.mu.Lock()
	u.running--
	u.mu.Unlock()
	select {
	case u.freed <- struct{}{}:
	default:
	}
}

// remove takes a waiting call out of its peer's queue. u.mu is held.
func (u *upstreamTurns) remove(peer string, t *turn) {
	q := u.queues[peer]
	for i, w := range q {
		if w == t {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) > 0 {
		u.queues[peer] = q
		return
	}
	delete(u.queues, peer)
	for i, p := range u.order {
		if p == peer {
			u.order = append(u.order[:i], u.order[i+1:]...)
			if i < u.next {
				u.next--
			}
			break
		}
	}
}
