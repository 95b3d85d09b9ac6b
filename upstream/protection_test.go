package upstream_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

func TestRateLimitCapsUpstreamQPS(t *testing.T) {
	t.Parallel()
	const qps, burst, calls = 200, 10, 110
	var mu sync.Mutex
	var arrivals []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		_, _ = io.WriteString(w, upstreamtest.OKBody)
	}))
	t.Cleanup(srv.Close)
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRateLimit(qps, burst))
	start := time.Now()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range calls / 10 {
				if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// A token bucket cannot be faster than (calls-burst)/qps.
	elapsed := time.Since(start)
	if floor := time.Duration(float64(calls-burst) / qps * float64(time.Second)); elapsed < floor {
		t.Errorf("%d calls took %v, faster than the limit allows (%v)", calls, elapsed, floor)
	}
	// Nor much slower: the pacer starts at its ceiling, and an upstream
	// that never throttles gives it no reason to leave it. Twice the
	// ceiling's time plus a second absorbs a loaded machine, and still
	// catches a pacer that went to its floor or lost its ceiling's rate.
	if ceiling := 2*time.Duration(float64(calls)/qps*float64(time.Second)) + time.Second; elapsed > ceiling {
		t.Errorf("%d calls took %v at %d calls/s, slower than the limit should make them (%v)", calls, elapsed, qps, ceiling)
	}
	// Windows shorter than the run are not checked here: goroutine
	// scheduling between the limiter and the server can bunch arrivals on
	// a loaded machine. TestFaultSoak (service/gateway) measures the
	// upstream's one-second peak.
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != calls {
		t.Errorf("%d upstream requests, want %d", len(arrivals), calls)
	}
}

func TestRetryBudgetBoundsRetriesUnderPersistentFailure(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t, upstreamtest.Answer{Status: http.StatusServiceUnavailable, Body: upstreamtest.ErrorBody("ServiceUnavailable")})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(4)),
		upstream.WithRetryBudget(upstream.NewRetryBudget(0.1, 20)))
	const calls = 1000
	for range calls {
		if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err == nil {
			t.Fatal("a call succeeded against an upstream that always fails")
		}
	}
	retries := len(sc.Requests()) - calls
	// 10% of the calls, plus the initial reserve of 20.
	if retries > calls/10+20 || retries < calls/10 {
		t.Errorf("%d retries for %d calls against a failing upstream, want about 10%% (at most %d)", retries, calls, calls/10+20)
	}
}

func TestRetryBudgetAllowsRetriesWhileMostCallsSucceed(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 1 { // every third attempt is throttled
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, upstreamtest.ErrorBody("Throttling.User"))
			return
		}
		_, _ = io.WriteString(w, upstreamtest.OKBody)
	}))
	t.Cleanup(srv.Close)
	// The gateway's default rate limit (--upstream-qps 100, burst 20): the
	// pacer's ceiling is what it climbs back to between throttles. One
	// throttle in three, not every other call: at half the calls throttled
	// or more the pacer takes the throttling to be the quota's and lowers
	// its rate towards its floor, as the Pacer's doc says (a known limit).
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(4)),
		upstream.WithRateLimit(100, 20))
	for i := range 500 {
		if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
			t.Fatalf("call %d at 33%% throttling: %v", i, err)
		}
	}
}

func TestAttemptTimeoutRetriesASlowDrip(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 1 {
			_, _ = io.WriteString(w, upstreamtest.OKBody)
			return
		}
		w.WriteHeader(http.StatusOK)
		for _, b := range []byte(upstreamtest.OKBody) { // one byte per 50 ms: 8 s for the body
			if _, err := w.Write([]byte{b}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(srv.Close)

	slow := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(2)),
		upstream.WithAttemptTimeout(300*time.Millisecond))
	page, err := slow.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("after a slow-drip attempt: %v %v", page, err)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("%d attempts, want 2: the dripping one timed out and was retried", got)
	}

	n.Store(0)
	once := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(1)),
		upstream.WithAttemptTimeout(300*time.Millisecond))
	_, err = once.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"})
	if err == nil || !strings.Contains(err.Error(), "timed out") || errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want an attempt timeout", err)
	}
}

func TestThrottlingHintIsHonoured(t *testing.T) {
	t.Parallel()
	hinted := func(ms string) upstreamtest.Answer {
		return upstreamtest.Answer{Status: http.StatusBadRequest, Body: upstreamtest.ErrorBody("Throttling.User"),
			Header: http.Header{"X-Ratelimit-User-Api": {"Limit:10,Remain:0,TimeLeft:" + ms + ",Reset:1700000000"}}}
	}
	policy := upstream.RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: time.Second}

	sc := upstreamtest.InOrder(t, hinted("300"), upstreamtest.Answer{Status: http.StatusOK, Body: upstreamtest.OKBody})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(policy))
	start := time.Now()
	if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond || len(sc.Requests()) != 2 {
		t.Errorf("retried after %v in %d attempts, want after the hinted 300 ms", elapsed, len(sc.Requests()))
	}

	// A hint longer than the max wait (30 s by default) is not waited for:
	// the caller gets the throttling error, with the hint, at once.
	sc = upstreamtest.InOrder(t, hinted("60000"), upstreamtest.Answer{Status: http.StatusOK, Body: upstreamtest.OKBody})
	c = upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(policy))
	_, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"})
	apiErr, ok := errors.AsType[*upstream.APIError](err)
	if !ok || len(sc.Requests()) != 1 {
		t.Fatalf("err = %v after %d attempts", err, len(sc.Requests()))
	}
	if hint, ok := apiErr.ThrottlingHint(); !ok || hint != time.Minute {
		t.Errorf("ThrottlingHint() = %v, %v; want 1m", hint, ok)
	}
}

func TestRateLimitNeverWaitsPastTheDeadline(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t, upstreamtest.Answer{Status: http.StatusOK, Body: upstreamtest.OKBody})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRateLimit(0.1, 1)) // a token every 10 s
	if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
		t.Fatal(err) // the burst of one
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"})
	if err == nil || len(sc.Requests()) != 1 {
		t.Fatalf("err = %v after %d upstream calls; want a rate-limit error and no second call", err, len(sc.Requests()))
	}
	// The call cannot finish within the caller's deadline: that is what the
	// caller must learn (DEADLINE_EXCEEDED), not an unreachable upstream.
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v; want it to wrap context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed >= time.Second {
		t.Errorf("waited %v, until the deadline, for a token that could not come in time", elapsed)
	}
}
