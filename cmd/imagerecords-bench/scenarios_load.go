package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// heapSampleEvery is how often the heap samplers read the heap size.
const heapSampleEvery = 2 * time.Millisecond

// sendProbe watches one stream from inside the gateway's handler.
type sendProbe struct {
	fetched func() int64 // upstream pages fetched so far
	sent    atomic.Int64 // messages handed to the transport
	maxHeld atomic.Int64 // max pages fetched but not yet handed over
}

func (p *sendProbe) beforeSend() {
	held := p.fetched() - p.sent.Load() // the page about to be sent counts
	p.sent.Add(1)
	if held > p.maxHeld.Load() {
		p.maxHeld.Store(held) // one stream at a time: no lost updates
	}
}

// scenarioMemory: a slow reader of a long stream. The heap must stay flat
// (the same peak for 10,000 records as for 1,000,000) and the gateway must
// not page ahead of the reader.
func scenarioMemory(o options, log io.Writer) (*report, error) {
	const smallID, bigID = "ecd-s4small", "ecd-s4big"
	var probe atomic.Pointer[sendProbe]
	cfg := o.stackConfig([]ecdsim.Desktop{{ID: smallID, Records: o.s4Small}, {ID: bigID, Records: o.s4Records}}, o.s4Latency)
	cfg.beforeSend = func(int) {
		if p := probe.Load(); p != nil {
			p.beforeSend()
		}
	}
	st, err := startStack(cfg)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw := st.newGatewayClient()
	if _, err := gatewayList(ctx, gw, smallID, upstream.MaxPageSize); err != nil {
		return nil, err
	}

	type run struct {
		baseline, retained uint64
		peak               heapPeaks
		maxAhead, maxHeld  int64
		messages           int64
		elapsed            time.Duration
	}
	measure := func(id string, n int) (run, error) {
		settle()
		var r run
		r.baseline = heapObjects()
		calls0 := st.desktopCalls(id)
		p := &sendProbe{fetched: func() int64 { return st.desktopCalls(id) - calls0 }}
		probe.Store(p)
		defer probe.Store(nil)
		sampler := startHeapSampler(heapSampleEvery)
		start := time.Now()
		got, err := gatewayStream(ctx, gw, id, func(*imagerecordsv1.StreamImageModifiedRecordsResponse) {
			r.messages++
			r.maxAhead = max(r.maxAhead, p.fetched()-r.messages)
			time.Sleep(o.s4ReadDelay)
		})
		r.elapsed = time.Since(start)
		r.peak = sampler.Stop()
		r.maxHeld = p.maxHeld.Load()
		settle()
		r.retained = heapObjects() - min(r.baseline, heapObjects())
		if err != nil || got != n {
			return r, fmt.Errorf("stream of %s: %d of %d records: %v", id, got, n, err)
		}
		return r, nil
	}
	small, err := measure(smallID, o.s4Small)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "scenario 4: %d records to a reader sleeping %v per message ...\n", o.s4Records, o.s4ReadDelay)
	big, err := measure(bigID, o.s4Records)
	if err != nil {
		return nil, err
	}
	const limit = 32 << 20
	rep := &report{}
	vs := fmt.Sprintf("N=%d (ref: N=%d)", o.s4Records, o.s4Small)
	rep.add(row{scenario: 4, metric: "heap before the stream, " + vs,
		unit: unitBytes, measured: float64(big.baseline), reference: float64(small.baseline)})
	rep.add(row{scenario: 4, metric: "peak heap, " + vs,
		unit: unitBytes, measured: float64(big.peak.objects), reference: float64(small.peak.objects),
		target: "≤ 1.25×", verdict: check(float64(big.peak.objects) <= 1.25*float64(small.peak.objects))})
	rep.add(row{scenario: 4, metric: fmt.Sprintf("peak heap, N=%d", o.s4Records),
		unit: unitBytes, measured: float64(big.peak.objects), reference: none(),
		target: "≤ 32 MiB", verdict: check(big.peak.objects <= limit)})
	rep.add(row{scenario: 4, metric: "peak live heap (marked by GC), " + vs,
		unit: unitBytes, measured: float64(big.peak.live), reference: float64(small.peak.live)})
	rep.add(row{scenario: 4, metric: "heap retained after the stream + GC, " + vs,
		unit: unitBytes, measured: float64(big.retained), reference: float64(small.retained)})
	rep.add(row{scenario: 4, metric: "max pages fetched − received by reader, " + vs,
		unit: unitCount, suffix: "pages", measured: float64(big.maxAhead), reference: float64(small.maxAhead),
		target: "≤ 2", verdict: check(big.maxAhead <= 2)})
	rep.add(row{scenario: 4, metric: "  of which held in the gateway (not yet sent), " + vs,
		unit: unitCount, suffix: "pages", measured: float64(big.maxHeld), reference: float64(small.maxHeld),
		target: "≤ 2", verdict: check(big.maxHeld <= 2)})
	rep.note("heap = runtime/metrics %s (peak) and %s (peak live) of the whole process (simulator, gateway, client), sampled every %v; baseline and retained after a GC",
		heapObjectsMetric, heapLiveMetric, heapSampleEvery)
	rep.note("pages ahead = sim.DesktopCalls − messages received, sampled at every receive; held by the gateway = sim.DesktopCalls − messages " +
		"already handed to the transport, sampled as the gateway begins to write each message (observed outside the handler chain; the page being written counts 1)")
	rep.note("the difference between the two is messages in flight: written by the gateway into the HTTP/2 stream, inside the client's receive window "+
		"(here %s); the simulator's nonce store grows by about 100 B per call and shows in the retained heap",
		map[bool]string{true: fmt.Sprintf("%d bytes", o.clientWindow), false: "Go's default of 4 MiB"}[o.clientWindow > 0])
	rep.note("a slow reader: it sleeps %v per message; upstream latency %v; N=%d: %d messages in %.1f s; N=%d: %d messages in %.1f s",
		o.s4ReadDelay, o.s4Latency, o.s4Records, big.messages, big.elapsed.Seconds(), o.s4Small, small.messages, small.elapsed.Seconds())
	return rep, nil
}

// loadRun is the outcome of many concurrent streams.
type loadRun struct {
	ttfm      []time.Duration // sorted
	failures  int64
	records   int64
	wall, cpu time.Duration
	peakHeap  uint64
	peakRSS   uint64
	rssErr    error
}

// runLoad starts streams streams, all at once behind a barrier or, with a
// positive ramp, stream i at ramp·i/streams after the first, and measures
// the time to each one's first message, the process's CPU time, peak heap
// and peak RSS. stream(i, first) runs stream i, calls first on its first
// message, and returns its record count.
func runLoad(streams, wantRecords int, ramp time.Duration, stream func(i int, first func()) (int, error)) loadRun {
	settle()
	var r loadRun
	r.rssErr = resetPeakRSS()
	sampler := startHeapSampler(heapSampleEvery)
	cpu0 := cpuTime()
	ttfm := make([]time.Duration, streams)
	var failures, records atomic.Int64
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for i := range streams {
		wg.Go(func() {
			<-begin
			if ramp > 0 {
				time.Sleep(ramp * time.Duration(i) / time.Duration(streams))
			}
			start := time.Now()
			var once sync.Once
			got, err := stream(i, func() { once.Do(func() { ttfm[i] = time.Since(start) }) })
			records.Add(int64(got))
			if err != nil || got != wantRecords {
				failures.Add(1)
			}
		})
	}
	start := time.Now()
	close(begin)
	wg.Wait()
	r.wall = time.Since(start)
	r.cpu = cpuTime() - cpu0
	r.peakHeap = sampler.Stop().objects
	if rss, err := peakRSS(); err == nil && r.rssErr == nil {
		r.peakRSS = rss
	} else if r.rssErr == nil {
		r.rssErr = err
	}
	var l latencies
	l.add(ttfm...)
	r.ttfm = l.sorted()
	r.failures = failures.Load()
	r.records = records.Load()
	return r
}

// scenarioManyCallers: many concurrent full streams at upstream latency,
// through the gateway and, as the reference, by the direct client.
func scenarioManyCallers(o options, log io.Writer) (*report, error) {
	streams, n := o.s5Streams, o.s5Records
	ids := make([]string, streams)
	desktops := make([]ecdsim.Desktop, streams)
	for i := range ids {
		ids[i] = fmt.Sprintf("ecd-s5d%05d", i)
		desktops[i] = ecdsim.Desktop{ID: ids[i], Records: n}
	}
	cfg := o.stackConfig(desktops, o.latency)
	// Every caller of this scenario comes from one loopback address, one
	// peer to the gateway: the per-peer stream cap (100) would refuse all
	// but a hundred of them. The scenario measures many callers.
	cfg.maxStreamsPerPeer = streams
	st, err := startStack(cfg)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	clients := make([]imagerecordsv1connect.ImageRecordsServiceClient, o.s5Clients)
	for i := range clients {
		clients[i] = st.newGatewayClient()
	}
	direct := st.newDirectClient()

	// Warm the connection pools with one concurrent burst of single
	// pages each way, as a running gateway and its callers have them.
	fmt.Fprintf(log, "scenario 5: warming connection pools with %d concurrent calls each way ...\n", streams)
	var wg sync.WaitGroup
	var warmErrs atomic.Int64
	for i := range streams {
		wg.Go(func() {
			if _, err := direct.describe(ctx, ids[i], "", upstream.MaxPageSize); err != nil {
				warmErrs.Add(1)
			}
			if _, err := gatewayList(ctx, clients[i%len(clients)], ids[i], upstream.MaxPageSize); err != nil {
				warmErrs.Add(1)
			}
		})
	}
	wg.Wait()
	if e := warmErrs.Load(); e > 0 {
		return nil, fmt.Errorf("%d warm-up calls failed", e)
	}

	fmt.Fprintf(log, "scenario 5: %d direct streams ...\n", streams)
	ref := runLoad(streams, n, o.s5Ramp, func(i int, first func()) (int, error) {
		return direct.stream(ctx, ids[i], upstream.MaxPageSize, func(*directPage) { first() })
	})
	calls0 := make([]int64, streams)
	for i, id := range ids {
		calls0[i] = st.desktopCalls(id)
	}
	fmt.Fprintf(log, "scenario 5: %d gateway streams ...\n", streams)
	gw := runLoad(streams, n, o.s5Ramp, func(i int, first func()) (int, error) {
		return gatewayStream(ctx, clients[i%len(clients)], ids[i], func(*imagerecordsv1.StreamImageModifiedRecordsResponse) { first() })
	})
	wrongCalls := 0
	want := int64(pagesFor(n, upstream.MaxPageSize))
	for i, id := range ids {
		if st.desktopCalls(id)-calls0[i] != want {
			wrongCalls++
		}
	}

	perMillion := func(r loadRun) float64 { return r.cpu.Seconds() / float64(r.records) * 1e6 }
	p := func(r loadRun, q float64) float64 { return seconds(percentile(r.ttfm, q)) }
	rep := &report{}
	label := fmt.Sprintf("%d streams × %d @%v", streams, n, o.latency)
	rep.add(row{scenario: 5, metric: "failed or incomplete streams, " + label + " (ref: direct)",
		unit: unitCount, measured: float64(gw.failures), reference: float64(ref.failures),
		target: "0", verdict: check(gw.failures == 0)})
	rep.add(row{scenario: 5, metric: fmt.Sprintf("streams not making exactly %d upstream calls", want),
		unit: unitCount, measured: float64(wrongCalls), reference: none(), target: "0", verdict: check(wrongCalls == 0)})
	rep.add(row{scenario: 5, metric: "time to first message p50 (ref: direct, first page)",
		unit: unitDuration, measured: p(gw, 50), reference: p(ref, 50)})
	rep.add(row{scenario: 5, metric: "time to first message p99 (ref: direct, first page)",
		unit: unitDuration, measured: p(gw, 99), reference: p(ref, 99),
		target: fmt.Sprintf("≤ %v", 3*o.latency), verdict: check(percentile(gw.ttfm, 99) <= 3*o.latency)})
	rep.add(row{scenario: 5, metric: "wall time, all streams (ref: direct)",
		unit: unitDuration, measured: seconds(gw.wall), reference: seconds(ref.wall)})
	rep.add(row{scenario: 5, metric: "CPU seconds per million records, whole process (ref: direct)",
		unit: unitFloat, suffix: "s", measured: perMillion(gw), reference: perMillion(ref)})
	if gw.rssErr == nil && ref.rssErr == nil {
		rep.add(row{scenario: 5, metric: "peak RSS (VmHWM), whole process (ref: direct run)",
			unit: unitBytes, measured: float64(gw.peakRSS), reference: float64(ref.peakRSS)})
	} else {
		rep.note("peak RSS unavailable: %v %v", gw.rssErr, ref.rssErr)
	}
	rep.add(row{scenario: 5, metric: "peak heap, whole process (ref: direct run)",
		unit: unitBytes, measured: float64(gw.peakHeap), reference: float64(ref.peakHeap)})
	proc, err := fanInProcess(o, st, ids, log)
	if err != nil {
		return nil, fmt.Errorf("gateway process: %w", err)
	}
	procMiB := float64(proc.peakRSS) / (1 << 20)
	rep.add(row{scenario: 5, metric: "gateway process: failed or incomplete streams (ref: direct)",
		unit: unitCount, measured: float64(proc.failures), reference: float64(ref.failures),
		target: "0", verdict: check(proc.failures == 0)})
	rep.add(row{scenario: 5, metric: "gateway process: time to first message p50 (ref: direct)",
		unit: unitDuration, measured: p(proc.loadRun, 50), reference: p(ref, 50)})
	rep.add(row{scenario: 5, metric: "gateway process: time to first message p99 (ref: direct)",
		unit: unitDuration, measured: p(proc.loadRun, 99), reference: p(ref, 99)})
	rep.add(row{scenario: 5, metric: "gateway process: CPU s per million records, gateway only (ref: direct run, simulator + direct client)",
		unit: unitFloat, suffix: "s", measured: perMillion(proc.loadRun), reference: perMillion(ref),
		target: "≤ 2.5 s", verdict: check(perMillion(proc.loadRun) <= 2.5)})
	rep.add(row{scenario: 5, metric: "gateway process: peak RSS (ref: its RSS before the streams, pools warm)",
		unit: unitBytes, measured: float64(proc.peakRSS), reference: float64(proc.baseline),
		target: "≤ 192 MiB", verdict: check(procMiB <= 192)})
	rep.add(row{scenario: 5, metric: "gateway process: RSS as the last stream ended (ref: before)",
		unit: unitBytes, measured: float64(proc.end), reference: float64(proc.baseline)})
	rep.add(row{scenario: 5, metric: fmt.Sprintf("gateway process: RSS %v after the streams (ref: before)", o.s5After),
		unit: unitBytes, measured: float64(proc.after), reference: float64(proc.baseline)})
	rep.note("gateway process: imagerecords-bench serve-gateway (gateway.Run as imagerecordsd runs it, OTel SDK telemetry included, nothing exported) "+
		"against this process's simulator; CPU from /proc/<pid>/stat, RSS from /proc/<pid>/status (VmHWM reset before the streams); "+
		"%d records in %.2f s, CPU %.2f s; time to first message p50 %v p90 %v p99 %v",
		proc.records, proc.wall.Seconds(), proc.cpu.Seconds(),
		percentile(proc.ttfm, 50), percentile(proc.ttfm, 90), percentile(proc.ttfm, 99))
	if proc.profiles != "" {
		rep.note("gateway process profiles: %s", proc.profiles)
	}
	for _, m := range proc.memory {
		rep.note("gateway process memory %s", m)
	}
	start := "all streams start at once behind a barrier"
	if o.s5Ramp > 0 {
		start = fmt.Sprintf("stream starts spread evenly over %v", o.s5Ramp)
	}
	rep.note("%s, one desktop each, spread over %d gateway client connections; "+
		"the direct callers share one keep-alive pool of up to 1024 connections; pools warmed first", start, len(clients))
	rep.note("peak RSS is the whole process (simulator, gateway and clients; VmHWM reset before each run via /proc/self/clear_refs); " +
		"so are the peak heap and the CPU time (getrusage)")
	rep.note("time to first message: gateway p50 %v p90 %v p99 %v max %v; direct p50 %v p90 %v p99 %v max %v",
		percentile(gw.ttfm, 50), percentile(gw.ttfm, 90), percentile(gw.ttfm, 99), percentile(gw.ttfm, 100),
		percentile(ref.ttfm, 50), percentile(ref.ttfm, 90), percentile(ref.ttfm, 99), percentile(ref.ttfm, 100))
	rep.note("gateway: %d records, CPU %.2f s; direct: %d records, CPU %.2f s", gw.records, gw.cpu.Seconds(), ref.records, ref.cpu.Seconds())
	rep.note("TCP connections accepted (warm-up included): %s", st.connections())
	return rep, nil
}

// unaryRun is the outcome of a closed-loop unary load.
type unaryRun struct {
	lat      []time.Duration // sorted
	failures int64
	elapsed  time.Duration
	cpu      time.Duration // the whole process's
}

func (r unaryRun) cpuPerCall() float64 { return r.cpu.Seconds() / float64(len(r.lat)) }

func (r unaryRun) perSecond() float64 { return float64(len(r.lat)) / r.elapsed.Seconds() }

// runUnary runs concurrency callers in a closed loop for d.
func runUnary(concurrency int, d time.Duration, call func() error) unaryRun {
	settle()
	var l latencies
	var failures atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	start := time.Now()
	deadline := start.Add(d)
	for range concurrency {
		wg.Go(func() {
			own := make([]time.Duration, 0, 4096)
			for {
				t := time.Now()
				if !t.Before(deadline) {
					break
				}
				if err := call(); err != nil {
					failures.Add(1)
				}
				own = append(own, time.Since(t))
			}
			l.add(own...)
		})
	}
	wg.Wait()
	return unaryRun{lat: l.sorted(), failures: failures.Load(), elapsed: time.Since(start), cpu: cpuTime() - cpu0}
}

// scenarioUnary: ListImageModifiedRecords with page_size 100 against the
// direct client's single call, at the configured concurrency and unloaded.
func scenarioUnary(o options, log io.Writer) (*report, error) {
	const id = "ecd-s6unary"
	st, err := o.stack([]ecdsim.Desktop{{ID: id, Records: 1000}}, 0)
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx := context.Background()
	gw, direct := st.newGatewayClient(), st.newDirectClient()
	directCall := func() error {
		p, err := direct.describe(ctx, id, "", upstream.MaxPageSize)
		if err == nil && len(p.Records) != upstream.MaxPageSize {
			err = fmt.Errorf("%d records", len(p.Records))
		}
		return err
	}
	gatewayCall := func() error {
		p, err := gatewayList(ctx, gw, id, upstream.MaxPageSize)
		if err == nil && len(p.GetRecords()) != upstream.MaxPageSize {
			err = fmt.Errorf("%d records", len(p.GetRecords()))
		}
		return err
	}
	// Warm-up: open the connections the load will use.
	runUnary(o.s6Concurrency, 200*time.Millisecond, directCall)
	runUnary(o.s6Concurrency, 200*time.Millisecond, gatewayCall)

	rep := &report{}
	measure := func(concurrency int, d time.Duration) {
		fmt.Fprintf(log, "scenario 6: concurrency %d, %v each way ...\n", concurrency, d)
		ref := runUnary(concurrency, d, directCall)
		var gw unaryRun
		if concurrency == 1 && o.unaryProfile != "" {
			stop, err := profiles(options{cpuProfile: o.unaryProfile})
			if err != nil {
				fmt.Fprintf(log, "scenario 6: profile: %v\n", err)
			}
			gw = runUnary(concurrency, d, gatewayCall)
			if stop != nil {
				if err := stop(); err != nil {
					fmt.Fprintf(log, "scenario 6: profile: %v\n", err)
				}
			}
		} else {
			gw = runUnary(concurrency, d, gatewayCall)
		}
		p := func(r unaryRun, q float64) float64 { return seconds(percentile(r.lat, q)) }
		label := fmt.Sprintf("c=%d", concurrency)
		added := p(gw, 50) - p(ref, 50)
		rep.add(row{scenario: 6, metric: "List page_size 100 latency p50, " + label + " (ref: direct)",
			unit: unitDuration, measured: p(gw, 50), reference: p(ref, 50)})
		rep.add(row{scenario: 6, metric: "  added p50 (gateway − direct), " + label,
			unit: unitDuration, measured: added, reference: none(), target: "≤ 300 µs", verdict: check(added <= 300e-6)})
		rep.add(row{scenario: 6, metric: "List latency p99, " + label + " (ref: direct)",
			unit: unitDuration, measured: p(gw, 99), reference: p(ref, 99)})
		rep.add(row{scenario: 6, metric: "List throughput, " + label + " (ref: direct)",
			unit: unitRate, suffix: "req/s", measured: gw.perSecond(), reference: ref.perSecond()})
		rep.add(row{scenario: 6, metric: "CPU time per call, whole process, " + label + " (ref: direct)",
			unit: unitDuration, measured: gw.cpuPerCall(), reference: ref.cpuPerCall()})
		rep.add(row{scenario: 6, metric: "failed calls, " + label + " (ref: direct)",
			unit: unitCount, measured: float64(gw.failures), reference: float64(ref.failures), target: "0", verdict: check(gw.failures == 0)})
		rep.note("%s: gateway %d calls in %.1f s, direct %d calls in %.1f s", label, len(gw.lat), gw.elapsed.Seconds(), len(ref.lat), ref.elapsed.Seconds())
	}
	measure(o.s6Concurrency, o.s6Duration)
	if o.s6Unloaded > 0 && o.s6Concurrency != 1 {
		measure(1, o.s6Unloaded)
	}
	rep.note("TCP connections accepted (warm-up included): %s", st.connections())
	rep.note("closed loop, no upstream latency; the gateway's List and the direct call both fetch the first page of 100 records")
	return rep, nil
}
