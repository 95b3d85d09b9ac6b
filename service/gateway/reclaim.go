package gateway

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// reclaimEvery is how often the gateway checks whether it went quiet.
const reclaimEvery = 30 * time.Second

// reclaimWhenQuiet returns memory to the operating system once the gateway
// has gone quiet, until done is closed. A Go process that allocates little
// collects its garbage only every two minutes, and returns freed memory
// gradually after that: after an attack (stalled streams cut, floods
// gone) the gateway would hold its peak RSS for minutes. Every
// reclaimEvery, if no garbage collection ran since the last check (the
// gateway allocates little: it is quiet), it collects and returns the free
// memory at once (debug.FreeOSMemory); under load collections run on
// their own and it does nothing. Memory an attack took returns within a
// minute of its end.
func reclaimWhenQuiet(done <-chan struct{}) {
	sample := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	cycles := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	tick := time.NewTicker(reclaimEvery)
	defer tick.Stop()
	last := cycles()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		if cycles() == last {
			// Twice: the first collection moves what sync.Pools hold
			// aside, the second frees it.
			runtime.GC()
			debug.FreeOSMemory()
		}
		last = cycles()
	}
}
