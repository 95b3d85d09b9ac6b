package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
)

// fanInRun is scenario 5's run against the gateway in a process of its
// own, so that its CPU time and RSS are the gateway's alone: the
// simulator and the callers stay in this process.
type fanInRun struct {
	loadRun // cpu and peakRSS are the gateway process's
	// baseline is the gateway's RSS before the streams (started, pools
	// warmed, idle); end its RSS as the last stream ended, after its RSS
	// o.s5After later.
	baseline, end, after uint64
	profiles             string
	// memory says where the gateway's memory was (runtime/metrics), with
	// -s5-profile.
	memory []string
}

// fanInProcess runs the streams of scenario 5 through "imagerecords-bench
// serve-gateway" (gateway.Run, as imagerecordsd runs it, telemetry
// included) pointed at this process's simulator.
func fanInProcess(o options, st *stack, ids []string, log io.Writer) (fanInRun, error) {
	var r fanInRun
	n := o.s5Records
	args := []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream-endpoint", st.SimURL,
		"--compress-min-bytes", strconv.Itoa(o.compressMin),
		"--upstream-qps", strconv.FormatFloat(o.upstreamQPS, 'g', -1, 64),
		"--upstream-burst", strconv.Itoa(o.upstreamBurst),
		// One loopback peer opens every stream (see scenarioManyCallers).
		"--max-streams-per-peer", strconv.Itoa(len(ids)),
	}
	env := []string{
		"ALIBABA_CLOUD_ACCESS_KEY_ID=" + gatewaytest.KeyID,
		"ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + gatewaytest.KeySecret,
		"ALIBABA_CLOUD_ECS_METADATA_DISABLED=true",
	}
	if o.s5Profile != "" {
		env = append(env, profileListenEnv+"=127.0.0.1:0")
	}
	p, err := startGatewayProcess(args, env...)
	if err != nil {
		return r, err
	}
	defer func() { _ = p.stop() }()
	pid := p.cmd.Process.Pid
	url := "http://" + p.addr
	clients := make([]imagerecordsv1connect.ImageRecordsServiceClient, o.s5Clients)
	for i := range clients {
		hc := gatewaytest.H2C()
		if o.clientWindow > 0 {
			hc.Transport.(*http.Transport).HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: o.clientWindow}
		}
		defer hc.CloseIdleConnections()
		clients[i] = imagerecordsv1connect.NewImageRecordsServiceClient(hc, url, connect.WithGRPC())
	}
	ctx := context.Background()
	// One call per client first: calls a client starts before its HTTP/2
	// connection is up may each dial one of their own, and on a loaded
	// machine 1,000 at once passed --max-connections-per-peer (256) and
	// were refused ("max_connections_per_peer" in the gateway's log).
	for i, c := range clients {
		if _, err := gatewayList(ctx, c, ids[i%len(ids)], upstream.MaxPageSize); err != nil {
			return r, fmt.Errorf("the first call of client %d of the gateway process failed: %w; its log:\n%s", i, err, p.logs())
		}
	}
	fmt.Fprintf(log, "scenario 5: gateway process: warming connection pools with %d concurrent calls ...\n", len(ids))
	var wg sync.WaitGroup
	var warmErrs atomic.Int64
	var firstErr atomic.Pointer[string]
	for i, id := range ids {
		wg.Go(func() {
			if _, err := gatewayList(ctx, clients[i%len(clients)], id, upstream.MaxPageSize); err != nil {
				warmErrs.Add(1)
				noteError(&firstErr, err)
			}
		})
	}
	wg.Wait()
	if e := warmErrs.Load(); e > 0 {
		return r, fmt.Errorf("%d warm-up calls of the gateway process failed, the first with %s; its log:\n%s", e, *firstErr.Load(), p.logs())
	}
	settleFor(time.Second)
	if r.baseline, _, err = p.rss(); err != nil {
		return r, err
	}
	var memoryMu sync.Mutex // the heap profile's goroutine reads it too
	memory := func(when string) {
		if p.pprof != "" {
			m := when + ": " + fetchText("http://"+p.pprof+"/debug/memory")
			memoryMu.Lock()
			r.memory = append(r.memory, m)
			memoryMu.Unlock()
		}
	}
	memory("before the streams")
	if err := resetProcessPeakRSS(pid); err != nil {
		return r, err
	}
	cpu0, err := processCPU(pid)
	if err != nil {
		return r, err
	}

	var received atomic.Int64
	half := int64(len(ids) * n / 2)
	var heap sync.Once
	var profileErrs [2]error
	var cpuDone chan struct{}
	if o.s5Profile != "" {
		cpuDone = make(chan struct{})
		go func() { // the run takes a few seconds: 8 s cover its bulk
			defer close(cpuDone)
			profileErrs[0] = fetchProfile("http://"+p.pprof+"/debug/pprof/profile?seconds=8", o.s5Profile+".cpu")
		}()
	}
	fmt.Fprintf(log, "scenario 5: gateway process: %d streams ...\n", len(ids))
	r.loadRun = runLoad(len(ids), n, o.s5Ramp, func(i int, first func()) (int, error) {
		return gatewayStream(ctx, clients[i%len(clients)], ids[i], func(m *imagerecordsv1.StreamImageModifiedRecordsResponse) {
			first()
			if o.s5Profile != "" && received.Add(int64(len(m.GetRecords()))) >= half {
				heap.Do(func() {
					go func() {
						profileErrs[1] = fetchProfile("http://"+p.pprof+"/debug/pprof/heap", o.s5Profile+".heap")
						memory("at half the records")
					}()
				})
			}
		})
	})
	cpu1, err := processCPU(pid)
	if err != nil {
		return r, err
	}
	r.cpu = cpu1 - cpu0
	if r.end, r.peakRSS, err = p.rss(); err != nil {
		return r, err
	}
	r.rssErr = nil // runLoad's figures of this process are not the gateway's
	memory("as the last stream ended")
	fmt.Fprintf(log, "scenario 5: gateway process: waiting %v ...\n", o.s5After)
	time.Sleep(o.s5After) // the callers' connections stay open, as a sidecar's do
	if r.after, _, err = p.rss(); err != nil {
		return r, err
	}
	memory(fmt.Sprintf("%v after", o.s5After))
	if cpuDone != nil {
		<-cpuDone // the heap profile, begun at half the records, is long done
		memoryMu.Lock()
		defer memoryMu.Unlock()
		r.profiles = fmt.Sprintf("cpu %q (8 s from the start), heap %q (at half the records): errors %v", o.s5Profile+".cpu", o.s5Profile+".heap", profileErrs)
	}
	return r, nil
}

// fetchProfile saves the pprof profile at url in path.
func fetchProfile(url, path string) error {
	res, err := http.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, res.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
