package main

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// This file holds the fleet scenarios 7 and 8.

// fleetDesktops returns n desktops of records records each, ids prefixed.
func fleetDesktops(prefix string, n, records int) ([]ecdsim.Desktop, []string) {
	desktops := make([]ecdsim.Desktop, n)
	ids := make([]string, n)
	for i := range desktops {
		ids[i] = fmt.Sprintf("ecd-%s%05d", prefix, i)
		desktops[i] = ecdsim.Desktop{ID: ids[i], Records: records}
	}
	return desktops, ids
}

// scenarioFleetSpeed: one fleet call over many desktops against an account
// quota, with the gateway at imagerecordsd's defaults (its own rate limit
// of 100 calls/s, burst 20, and 16 desktops at once). The floor is the
// quota: calls ÷ quota. The reference is what a caller without the fleet
// call writes first, a sequential loop over the desktops with the direct
// client, in the same run.
func scenarioFleetSpeed(o options, log io.Writer) (*report, error) {
	n, per := o.s7Desktops, o.s7Records
	desktops, ids := fleetDesktops("s7d", n, per)
	cfg := o.stackConfig(desktops, o.latency)
	def := gateway.DefaultConfig()
	cfg.upstreamQPS, cfg.upstreamBurst = def.UpstreamQPS, def.UpstreamBurst
	cfg.quota = ecdsim.Quota{QPS: o.s7Quota}
	st, err := startStack(cfg)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw, direct := st.newGatewayClient(), st.newDirectClient()
	pages := n * pagesFor(per, upstream.MaxPageSize)
	floor := time.Duration(float64(pages) / o.s7Quota * float64(time.Second))

	fmt.Fprintf(log, "scenario 7: a fleet of %d desktops × %d records, quota %g calls/s ...\n", n, per, o.s7Quota)
	before := st.Sim.Stats()
	start := time.Now()
	res, err := gatewayFleet(ctx, gw, ids, 0, nil)
	wall := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	gwStats := st.Sim.Stats()
	calls, throttled := gwStats.Requests-before.Requests, gwStats.QuotaThrottled-before.QuotaThrottled

	fmt.Fprintf(log, "scenario 7: the same desktops one after another with the direct client ...\n")
	start = time.Now()
	directRecords := 0
	for _, id := range ids {
		got, err := direct.stream(ctx, id, upstream.MaxPageSize, nil)
		if err != nil {
			return nil, fmt.Errorf("direct loop, %s: %w", id, err)
		}
		directRecords += got
	}
	directWall := time.Since(start)
	directThrottled := st.Sim.Stats().QuotaThrottled - gwStats.QuotaThrottled

	s := res.summary
	exact := res.records == n*per && s.GetDesktopsOk() == int32(n) && s.GetDesktopsFailed() == 0 && s.GetRecords() == int64(n*per) && directRecords == n*per
	label := fmt.Sprintf("%d desktops × %d @%v, quota %g/s", n, per, o.latency, o.s7Quota)
	rep := &report{}
	rep.add(row{scenario: 7, metric: fmt.Sprintf("fleet wall time, %s (ref: quota floor %d calls ÷ %g/s)", label, pages, o.s7Quota),
		unit: unitDuration, measured: seconds(wall), reference: seconds(floor),
		target: "≤ 1.10×", verdict: check(float64(wall) <= 1.10*float64(floor))})
	rep.add(row{scenario: 7, metric: "fleet wall time (ref: sequential loop, direct client)",
		unit: unitDuration, measured: seconds(wall), reference: seconds(directWall)})
	rep.add(row{scenario: 7, metric: fmt.Sprintf("upstream calls (ref: %d × ceil(%d/100))", n, per),
		unit: unitCount, suffix: "calls", measured: float64(calls), reference: float64(pages)})
	rep.add(row{scenario: 7, metric: "quota throttling answers (ref: direct loop)",
		unit: unitCount, measured: float64(throttled), reference: float64(directThrottled)})
	rep.add(row{scenario: 7, metric: "every record once, every desktop done (ref: records)",
		unit: unitCount, suffix: "records", measured: float64(res.records), reference: float64(n * per),
		target: "exact", verdict: check(exact)})
	rep.note("summary message: %v", s)
	rep.note("gateway at imagerecordsd's defaults: --upstream-qps %g --upstream-burst %d --fleet-concurrency %d; simulator quota %g calls/s (bucket of %d); latency %v per call",
		def.UpstreamQPS, def.UpstreamBurst, service.DefaultFleetConcurrency, o.s7Quota, st.Sim.Quota().Burst, o.latency)
	rep.note("fleet: %d messages, %d records, %d upstream requests (%d throttled) in %v = %.1f calls/s; direct loop: %d records in %v",
		res.messages, res.records, calls, throttled, wall.Round(time.Millisecond), float64(calls)/wall.Seconds(), directRecords, directWall.Round(time.Millisecond))
	return rep, nil
}

// scenarioFleetMemory: a fleet of 1,000 long desktops to a slow reader. The
// gateway holds at most 2 pages per desktop in flight plus the one it
// sends (2 × concurrency + 1), so the heap must be that of a fleet that
// fills the workers once, however many desktops follow.
func scenarioFleetMemory(o options, log io.Writer) (*report, error) {
	conc := service.DefaultFleetConcurrency
	bigDesktops, bigIDs := fleetDesktops("s8big", o.s8Desktops, o.s8Records)
	smallDesktops, smallIDs := fleetDesktops("s8small", o.s8Small, o.s8Records)
	var fetched func() int64
	var sentPages, maxHeld atomic.Int64
	var probing atomic.Bool
	cfg := o.stackConfig(append(bigDesktops, smallDesktops...), o.s4Latency)
	cfg.beforeSend = func(size int) {
		// Records messages of full pages are tens of KiB; the done
		// messages, a few hundred bytes with their token.
		if !probing.Load() || size < 8<<10 {
			return
		}
		held := fetched() - sentPages.Load() // the page about to be sent counts
		sentPages.Add(1)
		if held > maxHeld.Load() {
			maxHeld.Store(held) // one fleet at a time, one sender: no lost updates
		}
	}
	st, err := startStack(cfg)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw := st.newGatewayClient()

	type run struct {
		baseline, retained uint64
		peak               heapPeaks
		maxAhead, maxHeld  int64
		res                fleetResult
		elapsed            time.Duration
	}
	measure := func(ids []string) (run, error) {
		settle()
		var r run
		r.baseline = heapObjects()
		pages0 := st.Sim.Stats().Pages
		fetched = func() int64 { return st.Sim.Stats().Pages - pages0 }
		sentPages.Store(0)
		maxHeld.Store(0)
		probing.Store(true)
		defer probing.Store(false)
		sampler := startHeapSampler(heapSampleEvery)
		start := time.Now()
		received := int64(0)
		var err error
		r.res, err = gatewayFleet(ctx, gw, ids, 0, func(records int) {
			if records > 0 {
				received++
				r.maxAhead = max(r.maxAhead, fetched()-received)
			}
			time.Sleep(o.s4ReadDelay)
		})
		r.elapsed = time.Since(start)
		r.peak = sampler.Stop()
		r.maxHeld = maxHeld.Load()
		settle()
		r.retained = heapObjects() - min(r.baseline, heapObjects())
		if err == nil && r.res.records != len(ids)*o.s8Records {
			err = fmt.Errorf("%d of %d records", r.res.records, len(ids)*o.s8Records)
		}
		return r, err
	}
	small, err := measure(smallIDs)
	if err != nil {
		return nil, fmt.Errorf("fleet of %d: %w", len(smallIDs), err)
	}
	fmt.Fprintf(log, "scenario 8: a fleet of %d desktops × %d records to a reader sleeping %v per message ...\n", len(bigIDs), o.s8Records, o.s4ReadDelay)
	big, err := measure(bigIDs)
	if err != nil {
		return nil, fmt.Errorf("fleet of %d: %w", len(bigIDs), err)
	}
	const limit = 32 << 20
	heldBound := int64(2*conc + 1)
	rep := &report{}
	vs := fmt.Sprintf("%d desktops (ref: %d)", len(bigIDs), len(smallIDs))
	rep.add(row{scenario: 8, metric: "peak heap, fleet of " + vs + " × " + fmt.Sprint(o.s8Records),
		unit: unitBytes, measured: float64(big.peak.objects), reference: float64(small.peak.objects),
		target: "≤ 1.25×", verdict: check(float64(big.peak.objects) <= 1.25*float64(small.peak.objects))})
	rep.add(row{scenario: 8, metric: fmt.Sprintf("peak heap, fleet of %d × %d, whole process", len(bigIDs), o.s8Records),
		unit: unitBytes, measured: float64(big.peak.objects), reference: none(),
		target: "≤ 32 MiB", verdict: check(big.peak.objects <= limit)})
	rep.add(row{scenario: 8, metric: "peak live heap (marked by GC), " + vs,
		unit: unitBytes, measured: float64(big.peak.live), reference: float64(small.peak.live)})
	rep.add(row{scenario: 8, metric: "heap retained after the fleet + GC, " + vs,
		unit: unitBytes, measured: float64(big.retained), reference: float64(small.retained)})
	rep.add(row{scenario: 8, metric: "max pages held in the gateway (fetched − sent), " + vs,
		unit: unitCount, suffix: "pages", measured: float64(big.maxHeld), reference: float64(small.maxHeld),
		target: fmt.Sprintf("≤ %d", heldBound), verdict: check(big.maxHeld <= heldBound && small.maxHeld <= heldBound)})
	rep.add(row{scenario: 8, metric: "max pages fetched − received by the reader, " + vs,
		unit: unitCount, suffix: "pages", measured: float64(big.maxAhead), reference: float64(small.maxAhead)})
	rep.note("concurrency-bound figure: %d desktops at once × 2 pages (one waiting to be taken, one prefetched) + the page being sent = %d pages, "+
		"about %d × 40 KiB ≈ %.1f MiB of the gateway's heap, whatever the fleet's size", conc, heldBound, heldBound, float64(heldBound)*40/1024)
	rep.note("heap = runtime/metrics %s (peak) and %s (peak live) of the whole process (simulator, gateway, client), sampled every %v",
		heapObjectsMetric, heapLiveMetric, heapSampleEvery)
	rep.note("held = simulator pages answered − records messages handed to the transport (seen outside the handler chain, as the gateway begins to write each; the page being written counts 1); "+
		"the difference to \"received by the reader\" is messages inside HTTP/2 and the client's receive window (%s)",
		map[bool]string{true: fmt.Sprintf("%d bytes", o.clientWindow), false: "Go's default of 4 MiB"}[o.clientWindow > 0])
	rep.note("the simulator keeps every request's nonce (about 100 B each): the big fleet's 10 times as many calls show in the live heap, not the gateway")
	rep.note("a slow reader: it sleeps %v per message; %s: %d messages in %.1f s; ref: %d messages in %.1f s; summary %v",
		o.s4ReadDelay, vs, big.res.messages, big.elapsed.Seconds(), small.res.messages, small.elapsed.Seconds(), big.res.summary)
	return rep, nil
}
