package main

import (
	"context"
	"fmt"
	"io"
	"time"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// This file holds the single-stream scenarios 1 to 3; scenarios_load.go
// holds the memory and load scenarios 4 to 6.

// pagesFor is the physical minimum of upstream calls for n records:
// ceil(n/100), and at least the one call that learns there are none.
func pagesFor(n, pageSize int) int { return max(1, (n+pageSize-1)/pageSize) }

// stackConfig is the deployment the options ask for.
func (o options) stackConfig(desktops []ecdsim.Desktop, latency time.Duration) stackConfig {
	return stackConfig{
		desktops:      desktops,
		latency:       latency,
		telemetry:     o.telemetry,
		compressMin:   o.compressMin,
		clientWindow:  o.clientWindow,
		upstreamQPS:   o.upstreamQPS,
		upstreamBurst: o.upstreamBurst,
	}
}

func (o options) stack(desktops []ecdsim.Desktop, latency time.Duration) (*stack, error) {
	return startStack(o.stackConfig(desktops, latency))
}

// sameRecord reports whether a record the gateway delivered is record i of
// the simulator's desktop.
func sameRecord(sim *ecdsim.Simulator, desktop string, i int, got *imagerecordsv1.ImageModifiedRecord) bool {
	want, ok := sim.Record(desktop, i)
	if !ok || got == nil {
		return false
	}
	wantTime, err := time.Parse(time.RFC3339Nano, want.UpdateTime)
	return err == nil && got.GetImageId() == want.ImageID && got.GetNewImageName() == want.NewImageName &&
		int(got.GetUpstreamStatus()) == want.Status && got.GetUpdateTime().AsTime().Equal(wantTime)
}

// scenarioCalls: a full stream of N records makes ceil(N/100) upstream
// calls. The reference is measured too: the direct client with MaxResults
// unset, which is the official SDK's default page size of 10.
func scenarioCalls(o options, _ io.Writer) (*report, error) {
	var desktops []ecdsim.Desktop
	for _, n := range o.s1Sizes {
		desktops = append(desktops,
			ecdsim.Desktop{ID: fmt.Sprintf("ecd-s1gw%d", n), Records: n},
			ecdsim.Desktop{ID: fmt.Sprintf("ecd-s1sdk%d", n), Records: n})
	}
	st, err := o.stack(desktops, 0)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw, direct := st.newGatewayClient(), st.newDirectClient()
	rep := &report{}
	for _, n := range o.s1Sizes {
		id := fmt.Sprintf("ecd-s1gw%d", n)
		var first, last *imagerecordsv1.ImageModifiedRecord
		messages := 0
		got, err := gatewayStream(ctx, gw, id, func(m *imagerecordsv1.StreamImageModifiedRecordsResponse) {
			messages++
			if rs := m.GetRecords(); len(rs) > 0 {
				if first == nil {
					first = rs[0]
				}
				last = rs[len(rs)-1]
			}
		})
		if err != nil {
			return nil, fmt.Errorf("gateway stream of %d records: %w", n, err)
		}
		sdkID := fmt.Sprintf("ecd-s1sdk%d", n)
		refGot, err := direct.stream(ctx, sdkID, 0, nil)
		if err != nil {
			return nil, fmt.Errorf("direct stream of %d records: %w", n, err)
		}
		calls, refCalls := st.desktopCalls(id), st.desktopCalls(sdkID)
		want := pagesFor(n, upstream.MaxPageSize)
		correct := got == n && refGot == n && sameRecord(st.Sim, id, 0, first) && sameRecord(st.Sim, id, n-1, last)
		rep.add(row{
			scenario: 1, metric: fmt.Sprintf("upstream calls, full stream of N=%d (ref: SDK page size 10)", n),
			unit: unitCount, suffix: "calls", measured: float64(calls), reference: float64(refCalls),
			target: fmt.Sprintf("= %d", want), verdict: check(int(calls) == want && correct),
		})
		rep.note("N=%d: %d records in %d messages, first and last record equal to the simulator's: %v; "+
			"reference %d calls (ceil(N/10) = %d)", n, got, messages, correct, refCalls, pagesFor(n, upstream.DefaultPageSize))
	}
	rep.note("reference: the direct client with MaxResults unset, i.e. the upstream's and the official SDK's default page size of 10, counted by sim.DesktopCalls")
	return rep, nil
}

// scenarioLatencyBound: a stream at 20 ms per upstream call against the
// physical limit (pages × the per-call latency measured now) and against
// the direct client.
func scenarioLatencyBound(o options, _ io.Writer) (*report, error) {
	const id = "ecd-s2latency"
	n := o.s2Records
	cfg := o.stackConfig([]ecdsim.Desktop{{ID: id, Records: n}}, o.latency)
	cfg.traceSim = true
	st, err := startStack(cfg)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw, direct := st.newGatewayClient(), st.newDirectClient()
	// Warm both paths' connections: a caller of a running gateway finds
	// them open.
	if _, err := direct.describe(ctx, id, "", upstream.MaxPageSize); err != nil {
		return nil, err
	}
	if _, err := gatewayList(ctx, gw, id, upstream.MaxPageSize); err != nil {
		return nil, err
	}
	const probes = 21
	var single []time.Duration
	for range probes {
		t := time.Now()
		if _, err := direct.describe(ctx, id, "", upstream.MaxPageSize); err != nil {
			return nil, err
		}
		single = append(single, time.Since(t))
	}
	perCall := median(single)
	// The same calls through the gateway's own upstream client, to tell
	// the cost of one upstream call from the cost of streaming.
	var viaClient []time.Duration
	in := upstream.DescribeInput{RegionID: region, DesktopID: id, MaxResults: upstream.MaxPageSize}
	for range probes {
		t := time.Now()
		if _, err := st.Upstream.DescribeImageModifiedRecords(ctx, in); err != nil {
			return nil, err
		}
		viaClient = append(viaClient, time.Since(t))
	}
	pages := pagesFor(n, upstream.MaxPageSize)
	limit := perCall * time.Duration(pages)

	var gwTimes, refTimes, gwIdle, refIdle, gwBusy, refBusy []time.Duration
	for range o.repeat {
		st.simTrace.take()
		start := time.Now()
		var last time.Time
		got, err := direct.stream(ctx, id, upstream.MaxPageSize, func(*directPage) { last = time.Now() })
		if err != nil || got != n {
			return nil, fmt.Errorf("direct stream: %d of %d records: %v", got, n, err)
		}
		refTimes = append(refTimes, last.Sub(start))
		spans := st.simTrace.take()
		refIdle = append(refIdle, idleBetween(spans))
		refBusy = append(refBusy, busyIn(spans))

		start = time.Now()
		got, err = gatewayStream(ctx, gw, id, func(*imagerecordsv1.StreamImageModifiedRecordsResponse) { last = time.Now() })
		if err != nil || got != n {
			return nil, fmt.Errorf("gateway stream: %d of %d records: %v", got, n, err)
		}
		gwTimes = append(gwTimes, last.Sub(start))
		spans = st.simTrace.take()
		gwIdle = append(gwIdle, idleBetween(spans))
		gwBusy = append(gwBusy, busyIn(spans))
	}
	gwMed, refMed := median(gwTimes), median(refTimes)
	rep := &report{}
	rep.add(row{scenario: 2, metric: fmt.Sprintf("upstream call latency, median of %d direct calls (ref: injected)", probes),
		unit: unitDuration, measured: seconds(perCall), reference: seconds(o.latency)})
	rep.add(row{scenario: 2, metric: "one call through the gateway's upstream.Client, median (ref: direct call)",
		unit: unitDuration, measured: seconds(median(viaClient)), reference: seconds(perCall)})
	rep.add(row{scenario: 2, metric: fmt.Sprintf("stream wall time, N=%d @%v (ref: physical limit %d × call)", n, o.latency, pages),
		unit: unitDuration, measured: seconds(gwMed), reference: seconds(limit),
		target: "≤ 1.03×", verdict: check(float64(gwMed) <= 1.03*float64(limit))})
	rep.add(row{scenario: 2, metric: fmt.Sprintf("stream wall time, N=%d @%v (ref: direct client)", n, o.latency),
		unit: unitDuration, measured: seconds(gwMed), reference: seconds(refMed),
		target: "≤ 1.02×", verdict: check(float64(gwMed) <= 1.02*float64(refMed))})
	rep.add(row{scenario: 2, metric: "time added per page (gateway − direct) / pages",
		unit: unitDuration, measured: seconds((gwMed - refMed) / time.Duration(pages)), reference: none()})
	rep.add(row{scenario: 2, metric: "upstream idle between calls, sum per stream (ref: direct)",
		unit: unitDuration, measured: seconds(median(gwIdle)), reference: seconds(median(refIdle))})
	rep.add(row{scenario: 2, metric: "upstream busy (simulator's own time), sum per stream (ref: direct)",
		unit: unitDuration, measured: seconds(median(gwBusy)), reference: seconds(median(refBusy))})
	rep.note("wall time = the client's first request to its last record; medians of %d runs, direct and gateway alternating", o.repeat)
	rep.note("gateway runs: %v; direct runs: %v; single calls: min %v, median %v, max %v",
		gwTimes, refTimes, minDur(single), perCall, maxDur(single))
	rep.note("direct client vs physical limit: %.3f×; TCP connections accepted: %s", float64(refMed)/float64(limit), st.connections())
	rep.note("upstream idle = Σ (start of call k+1 − end of call k) and busy = Σ (end − start of call k), as the simulator's handler sees them: "+
		"idle is what the gateway (or the direct client) spends between upstream calls, busy is the injected %v plus the simulator's work "+
		"and timer overshoot; gateway idle %v busy %v; direct idle %v busy %v", o.latency, gwIdle, gwBusy, refIdle, refBusy)
	return rep, nil
}

// scenarioCPUBound: a stream without upstream latency, where only CPU
// bounds the rate; allocations are the whole process's (simulator,
// gateway and client) per record.
func scenarioCPUBound(o options, log io.Writer) (*report, error) {
	const id, warmID = "ecd-s3cpu", "ecd-s3warm"
	n := o.s3Records
	st, err := o.stack([]ecdsim.Desktop{{ID: id, Records: n}, {ID: warmID, Records: 10_000}}, 0)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw, direct := st.newGatewayClient(), st.newDirectClient()
	if _, err := direct.stream(ctx, warmID, upstream.MaxPageSize, nil); err != nil {
		return nil, err
	}
	if _, err := gatewayStream(ctx, gw, warmID, nil); err != nil {
		return nil, err
	}

	type run struct {
		elapsed, cpu    time.Duration
		mallocs, bytes  uint64
		recordsPerSec   float64
		allocsPerRecord float64
		bytesPerRecord  float64
		cpuPerRecord    time.Duration
	}
	measure := func(stream func() (int, error)) (run, error) {
		settle()
		allocs := startAllocCounter()
		cpu0 := cpuTime()
		start := time.Now()
		got, err := stream()
		elapsed := time.Since(start)
		cpu := cpuTime() - cpu0
		mallocs, bytes := allocs.Stop()
		if err != nil || got != n {
			return run{}, fmt.Errorf("%d of %d records: %v", got, n, err)
		}
		return run{
			elapsed: elapsed, cpu: cpu, mallocs: mallocs, bytes: bytes,
			recordsPerSec:   float64(n) / elapsed.Seconds(),
			allocsPerRecord: float64(mallocs) / float64(n),
			bytesPerRecord:  float64(bytes) / float64(n),
			cpuPerRecord:    cpu / time.Duration(n),
		}, nil
	}
	directStream := func() (int, error) { return direct.stream(ctx, id, upstream.MaxPageSize, nil) }
	gatewayRun := func() (int, error) { return gatewayStream(ctx, gw, id, nil) }
	var gwRuns, refRuns []run
	for range o.repeat {
		r, err := measure(directStream)
		if err != nil {
			return nil, fmt.Errorf("direct stream: %w", err)
		}
		refRuns = append(refRuns, r)
		if r, err = measure(gatewayRun); err != nil {
			return nil, fmt.Errorf("gateway stream: %w", err)
		}
		gwRuns = append(gwRuns, r)
	}
	med := func(runs []run, f func(run) float64) float64 {
		xs := make([]float64, len(runs))
		for i, r := range runs {
			xs[i] = f(r)
		}
		return median(xs)
	}
	rate := func(r run) float64 { return r.recordsPerSec }
	allocs := func(r run) float64 { return r.allocsPerRecord }
	bytes := func(r run) float64 { return r.bytesPerRecord }
	cpu := func(r run) float64 { return r.cpuPerRecord.Seconds() }
	gwRate, refRate := med(gwRuns, rate), med(refRuns, rate)
	rep := &report{}
	rep.add(row{scenario: 3, metric: fmt.Sprintf("records/s, N=%d, no latency (ref: direct client)", n),
		unit: unitRate, suffix: "rec/s", measured: gwRate, reference: refRate,
		target: "≥ 0.6×", verdict: check(gwRate >= 0.6*refRate)})
	rep.add(row{scenario: 3, metric: "allocations per record, whole process (ref: direct)",
		unit: unitFloat, suffix: "allocs", measured: med(gwRuns, allocs), reference: med(refRuns, allocs)})
	rep.add(row{scenario: 3, metric: "bytes allocated per record, whole process (ref: direct)",
		unit: unitCount, suffix: "B", measured: med(gwRuns, bytes), reference: med(refRuns, bytes)})
	rep.add(row{scenario: 3, metric: "CPU time per record, whole process (ref: direct)",
		unit: unitDuration, measured: med(gwRuns, cpu), reference: med(refRuns, cpu)})
	for i := range gwRuns {
		rep.note("run %d: gateway %.0f rec/s, %.1f allocs/rec, %.0f B/rec, CPU %.2f s in %.2f s; direct %.0f rec/s, %.1f allocs/rec, %.0f B/rec, CPU %.2f s in %.2f s",
			i+1, gwRuns[i].recordsPerSec, gwRuns[i].allocsPerRecord, gwRuns[i].bytesPerRecord, gwRuns[i].cpu.Seconds(), gwRuns[i].elapsed.Seconds(),
			refRuns[i].recordsPerSec, refRuns[i].allocsPerRecord, refRuns[i].bytesPerRecord, refRuns[i].cpu.Seconds(), refRuns[i].elapsed.Seconds())
	}
	rep.note("allocations and CPU are runtime.MemStats and getrusage deltas of the whole process (the simulator's share is in both columns)")
	rep.note("TCP connections accepted: %s", st.connections())

	if o.cpuProfile != "" || o.memProfile != "" {
		fmt.Fprintf(log, "scenario 3: profiling %d more gateway streams ...\n", o.repeat)
		settle()
		stop, err := profiles(o)
		if err != nil {
			return nil, err
		}
		var serr error
		for range o.repeat {
			if _, serr = gatewayRun(); serr != nil {
				break
			}
		}
		if err := stop(); err != nil {
			return nil, err
		}
		if serr != nil {
			return nil, serr
		}
		rep.note("profiles of %d extra gateway streams, after the measured runs: cpu %q, allocs %q (see -memprofile)", o.repeat, o.cpuProfile, o.memProfile)
	}
	return rep, nil
}

// busyIn sums the durations of the spans.
func busyIn(spans [][2]time.Time) time.Duration {
	var busy time.Duration
	for _, sp := range spans {
		busy += sp[1].Sub(sp[0])
	}
	return busy
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
