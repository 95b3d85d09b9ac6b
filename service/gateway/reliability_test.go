package gateway_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// arrivalLog records when each upstream request reached the simulator.
type arrivalLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (a *arrivalLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.times = append(a.times, time.Now())
		a.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// roundTripper logs every request rt is asked to send.
func (a *arrivalLog) roundTripper(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		a.mu.Lock()
		a.times = append(a.times, time.Now())
		a.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// maxInWindow is the most arrivals within any window.
func (a *arrivalLog) maxInWindow(window time.Duration) int {
	a.mu.Lock()
	times := append([]time.Time(nil), a.times...)
	a.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	best, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= window {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// TestFaultSoak streams 100 full desktops at once through an upstream that
// throttles 30% and fails 5% of its answers, through a gateway at its
// production defaults (retry policy and budget, attempt timeout, the shared
// rate limit of --upstream-qps 100, burst 20): every record arrives exactly
// once, in order, and the upstream never sees more than the limit.
func TestFaultSoak(t *testing.T) {
	t.Parallel()
	const (
		streams  = 100
		desktops = 10
		records  = 300
	)
	var ds []ecdsim.Desktop
	for i := range desktops {
		ds = append(ds, ecdsim.Desktop{ID: fmt.Sprintf("ecd-soak%011d", i), Records: records})
	}
	arrivals, admissions := &arrivalLog{}, &arrivalLog{}
	transport := upstream.NewTransport()
	t.Cleanup(transport.CloseIdleConnections)
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops:      ds,
		Faults:        ecdsim.Faults{ThrottleFraction: 0.30, ServerErrorFraction: 0.05},
		WrapSimulator: arrivals.wrap,
		// Not a setting: the transport only logs when each request leaves.
		UpstreamOptions: []upstream.Option{upstream.WithTransport(admissions.roundTripper(transport))},
	})
	qps, burst := int(h.Config.UpstreamQPS), h.Config.UpstreamBurst
	if qps != 100 || burst != 20 {
		t.Fatalf("the defaults are --upstream-qps %d --upstream-burst %d; the README states 100 and 20", qps, burst)
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i := range streams {
		wg.Go(func() {
			desktop := ds[i%desktops].ID
			stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: desktop,
			}))
			if err != nil {
				t.Error(err)
				return
			}
			msgs, err := gatewaytest.Drain(stream)
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			got := gatewaytest.RecordsOf(msgs)
			if len(got) != records {
				t.Errorf("stream %d: %d records, want %d", i, len(got), records)
				return
			}
			seen := map[string]bool{}
			for j, r := range got {
				want, _ := h.Sim.Record(desktop, j)
				id := r.GetImageId() + "/" + r.GetNewImageId() + "/" + r.GetUpdateTime().AsTime().String()
				if seen[id] || r.GetImageId() != want.ImageID || r.GetNewImageId() != want.NewImageID {
					t.Errorf("stream %d, record %d: %s (duplicate: %v), want %s/%s", i, j, id, seen[id], want.ImageID, want.NewImageID)
					return
				}
				seen[id] = true
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	st := h.Sim.Stats()
	peak, sent := arrivals.maxInWindow(time.Second), admissions.maxInWindow(time.Second)
	t.Logf("%d streams in %v: %d upstream requests (%d pages, %d throttled, %d 5xx); peak in one second: %d sent by the gateway, %d arrived at the simulator (limit %d/s, burst %d)",
		streams, elapsed.Round(time.Millisecond), st.Requests, st.Pages, st.Throttled, st.ServerErrors, sent, peak, qps, burst)
	// A page the simulator served can still be lost on the way back (an
	// attempt timing out on a loaded machine) and fetched again: the
	// records above prove nothing was delivered twice.
	if st.Pages < streams*records/100 {
		t.Errorf("%d pages served, want at least %d", st.Pages, streams*records/100)
	}
	if st.Throttled == 0 || st.ServerErrors == 0 {
		t.Errorf("the faults did not happen: %+v", st)
	}
	// A token bucket admits at most qps·1s + burst in any second. The
	// times logged are when requests left the gateway and reached the
	// simulator, a little after their admission; scheduling delays on a
	// loaded or race-instrumented machine can bunch them, so 5% on top is
	// allowed for what the gateway sent and 10% for what arrived.
	if sent > qps+burst+qps/20 {
		t.Errorf("the gateway sent %d requests in one second, over the limit of %d/s with burst %d", sent, qps, burst)
	}
	if peak > qps+burst+qps/10 {
		t.Errorf("the upstream saw %d requests in one second, over the limit of %d/s with burst %d", peak, qps, burst)
	}
}

// TestNoGoroutineLeaksAfterCancelledStreams cancels 1,000 streams at random
// points and checks that no goroutine outlives them. It does not run in
// parallel, so the goroutines it sees are its own.
func TestNoGoroutineLeaksAfterCancelledStreams(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	// Registered first, so it runs last: after the harness shut down.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	const desktop = "ecd-leak00000000500"
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: []ecdsim.Desktop{{ID: desktop, Records: 500}},
		// Not the default limit of 100 upstream calls/s: it is not under
		// test here, and it would stretch the ~3,500 calls to 35 s.
		Args: []string{"--upstream-qps", "0"},
	})
	rng := rand.New(rand.NewPCG(1, 2))
	points := make(chan int)
	go func() {
		defer close(points)
		for range 1000 {
			points <- rng.IntN(7) // 0..6 messages of 5: before the first, mid-way, or after the last
		}
	}()
	var wg sync.WaitGroup
	c := h.Client(connect.WithGRPC())
	for range 20 {
		wg.Go(func() {
			for n := range points {
				ctx, cancel := context.WithCancel(t.Context())
				stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
					RegionId: gatewaytest.Region, DesktopId: desktop,
				}))
				if err == nil {
					for i := 0; i < n && stream.Receive(); i++ {
					}
				}
				cancel()
				if err == nil {
					_ = stream.Close()
				}
			}
		})
	}
	wg.Wait()
	h.Gateway.WaitIdle()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
}
