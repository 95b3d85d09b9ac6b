package ecdsim_test

import (
	"sync/atomic"
	"time"
)

// fakeClock is a simulator clock that moves only when a test moves it.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Add(d time.Duration)     { c.ns.Add(int64(d)) }
func (c *fakeClock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Since(t time.Time) int64 { return c.ns.Load() - t.UnixNano() }
