package gateway

import (
	"fmt"
	"log/slog"
	"time"
)

// The termination timeline, from SIGTERM to exit:
//
//  1. Readiness turns NOT_SERVING at once; the listener keeps accepting
//     and every RPC is served as before for Config.DrainDelay, so that
//     load balancers, kube-proxy and the mesh withdraw the instance while
//     it still answers.
//  2. The listener closes, HTTP/2 connections get GOAWAY, and new RPCs on
//     open connections get Unavailable; RPCs in flight get
//     Config.ShutdownGrace to finish.
//  3. Those still running are cancelled with Unavailable ("resume from the
//     last resume_token"); they get [cancelledStatusWait] to send it.
//  4. Buffered spans and metrics are flushed for at most
//     [telemetryFlushTimeout]; with --simulate the simulator stops within
//     [simulatorStopTimeout].
//
// [Config.MaxExitTime] adds these up.
const (
	// cancelledStatusWait is how long cancelled RPCs get to send their
	// final status before their connections are closed.
	cancelledStatusWait = 2 * time.Second
	// telemetryFlushTimeout bounds the flush of spans and metrics at exit.
	telemetryFlushTimeout = 5 * time.Second
	// simulatorStopTimeout bounds the embedded simulator's shutdown.
	simulatorStopTimeout = time.Second
)

// MaxExitTime is the longest a gateway of c takes from SIGTERM to exit:
// the drain delay, the shutdown grace, the wait for cancelled RPCs'
// final status, the telemetry flush and (with --simulate) the
// simulator's stop. A pod's terminationGracePeriodSeconds must exceed it
// (plus any preStop hook), or the kubelet kills the gateway mid-drain.
func (c Config) MaxExitTime() time.Duration {
	d := c.DrainDelay + c.ShutdownGrace + cancelledStatusWait + telemetryFlushTimeout
	if c.Simulate {
		d += simulatorStopTimeout
	}
	return d
}

// beginDrain is step 1 of the timeline: readiness off, then serving on for
// the drain delay. It returns early with the server's error if the server
// stops meanwhile.
func (g *Gateway) beginDrain(served <-chan error) error {
	g.hardened.watches.drain() // health Watch streams end after the NOT_SERVING that follows
	g.health.setDraining()
	delay := g.cfg.DrainDelay
	g.logger.Info("draining: readiness is NOT_SERVING; still accepting calls for the drain delay", slog.Duration("drain_delay", delay))
	if delay <= 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-t.C:
		return nil
	}
}
