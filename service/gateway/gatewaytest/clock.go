package gatewaytest

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Clock is a clock that moves only when a test moves it. One Clock can be
// the simulator's clock and the gateway's signing clock (Config.Now) and
// the watch pollers' clock (service.WithWatchClock) at once, so that a
// test steps through a live desktop's changes without sleeping. It is safe
// for concurrent use.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []clockTimer
	changed chan struct{} // closed and replaced when a timer is armed
}

type clockTimer struct {
	at time.Time
	c  chan time.Time
}

// NewClock returns a clock that reads start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the time once the clock has moved
// d past now (at once for d <= 0).
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, clockTimer{at: c.now.Add(d), c: ch})
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
	return ch
}

// Set moves the clock to t, if t is later, and fires the timers due.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	c.timers = slices.DeleteFunc(c.timers, func(tm clockTimer) bool {
		if tm.at.After(c.now) {
			return false
		}
		tm.c <- c.now
		return true
	})
}

// Advance moves the clock by d and fires the timers due.
func (c *Clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Pending counts the timers armed and not yet fired: the watch pollers
// waiting for their next poll.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NextTimer waits until a timer is armed and returns the earliest time
// one is due; it fails t when none is armed within timeout.
func (c *Clock) NextTimer(t testing.TB, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		if len(c.timers) > 0 {
			at := c.timers[0].at
			for _, tm := range c.timers[1:] {
				if tm.at.Before(at) {
					at = tm.at
				}
			}
			c.mu.Unlock()
			return at
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no timer armed within %v", timeout)
		}
	}
}
