package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// The tests in this file pin the production defaults the README states
// (Reliability, Errors) by what a caller of a gateway started with no flag
// sees, so that changing a default's meaning fails a test. Literal figures
// are the README's, not the constants': a test that read the constant would
// follow it wherever it moved.

// listOnce makes one List call of the kit's region and a desktop.
func listOnce(ctx context.Context, h *gatewaytest.Stack) (*imagerecordsv1.ListImageModifiedRecordsResponse, error) {
	res, err := h.Client().ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: "ecd-defaults0000001",
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// TestDefaultsRetryAnOutageFourTimes: an upstream that answers every call
// 503 ServiceUnavailable gets exactly 4 attempts of one call (README:
// "attempts per upstream call: 4"), and the caller learns Unavailable.
func TestDefaultsRetryAnOutageFourTimes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	u := upstreamtest.InOrder(t, upstreamtest.Fail(http.StatusServiceUnavailable, "ServiceUnavailable"))
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
	_, err := listOnce(ctx, h)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("List against an upstream outage: %v, want Unavailable", err)
	}
	if n := len(u.Requests()); n != 4 {
		t.Errorf("%d upstream attempts for one call, want the default 4", n)
	}
}

// TestDefaultsBudgetRetriesUnderPersistentFailure: against an upstream that
// always fails, the default retry budget (README: "10% of calls + 20")
// lets 40 calls make 20 + 4 retries at most, not the 3 each (120) the
// attempts alone would allow, and at least the reserve of 20.
func TestDefaultsBudgetRetriesUnderPersistentFailure(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	const calls = 40
	u := upstreamtest.InOrder(t, upstreamtest.Fail(http.StatusServiceUnavailable, "ServiceUnavailable"))
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			if _, err := listOnce(ctx, h); connect.CodeOf(err) != connect.CodeUnavailable {
				t.Errorf("List against an upstream outage: %v, want Unavailable", err)
			}
		})
	}
	wg.Wait()
	if retries := len(u.Requests()) - calls; retries < 20 || retries > 20+calls/10 {
		t.Errorf("%d retries for %d failing calls, want 20 to %d (a reserve of 20 plus 0.1 per call)", retries, calls, 20+calls/10)
	}
}

// TestDefaultsCutAnAttemptAfterTenSeconds: an attempt whose upstream never
// answers is cut after 10 s (README: --upstream-attempt-timeout 10s) and
// retried; the caller gets the retry's answer.
func TestDefaultsCutAnAttemptAfterTenSeconds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	u := upstreamtest.InOrder(t, upstreamtest.OK(upstreamtest.OKBody))
	held := make(chan time.Duration, 1)
	var once sync.Once
	u.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			first := false
			once.Do(func() { first = true })
			if first { // never answers: waits for the gateway to give up
				start := time.Now()
				<-r.Context().Done()
				held <- time.Since(start)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
	res, err := listOnce(ctx, h)
	if err != nil || len(res.GetRecords()) != 1 {
		t.Fatalf("List after a stalled attempt: %v, %v; want the retry's record", res, err)
	}
	select {
	case d := <-held:
		// Measured by the upstream, from when it read the request: the
		// gateway's timer started a little earlier, so the lower bound
		// leaves room for sending it; the upper one for a loaded machine.
		// Both are far from another default (5 s, 15 s) would give.
		if d < 9*time.Second || d > 12*time.Second {
			t.Errorf("the stalled attempt was cut after %v, want the default 10 s", d)
		}
	case <-ctx.Done():
		t.Fatal("the stalled attempt was never cut")
	}
}

// paddedPage is a valid one-record upstream page of exactly size bytes
// (leading JSON whitespace).
func paddedPage(t *testing.T, size int) string {
	t.Helper()
	body := upstreamtest.Page("R-BIG", 1, "", upstreamtest.Record("m-big"))
	if size < len(body) {
		t.Fatalf("a page of %d bytes is shorter than its JSON", size)
	}
	return strings.Repeat(" ", size-len(body)) + body
}

// TestDefaultsCapUpstreamAnswersAtFourMiB: an upstream answer of 4 MiB is
// read, one byte more is refused as malformed (README: "upstream answer
// size 4 MiB").
func TestDefaultsCapUpstreamAnswersAtFourMiB(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		size int
		ok   bool
	}{
		{4<<20 - 1, true},
		{4 << 20, true},
		{4<<20 + 1, false},
	}
	for _, tc := range testCases {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			u := upstreamtest.InOrder(t, upstreamtest.OK(paddedPage(t, tc.size)))
			h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
			res, err := listOnce(ctx, h)
			switch {
			case tc.ok && (err != nil || len(res.GetRecords()) != 1):
				t.Errorf("an answer of %d bytes: %v, %v; want its record", tc.size, res, err)
			case !tc.ok && (connect.CodeOf(err) != connect.CodeInternal || gatewaytest.ErrorInfo(t, err).GetReason() != "UPSTREAM_RESPONSE_MALFORMED"):
				t.Errorf("an answer of %d bytes: %v, want Internal UPSTREAM_RESPONSE_MALFORMED", tc.size, err)
			}
			if n := len(u.Requests()); n != 1 {
				t.Errorf("%d upstream calls, want 1 (a malformed answer is not retried)", n)
			}
		})
	}
}

// emptyThenRecord scripts empty pages, each with a new NextToken, then a
// last page with one record.
func emptyThenRecord(empty int) map[string]string {
	bodies := map[string]string{}
	token := ""
	for i := range empty {
		next := fmt.Sprintf("E%d", i+1)
		bodies[token] = upstreamtest.Page(fmt.Sprintf("R%d", i), 1, next)
		token = next
	}
	bodies[token] = upstreamtest.Page("R-LAST", 1, "", upstreamtest.Record("m-last"))
	return bodies
}

// TestDefaultsFollowTenEmptyPages: a stream follows 10 empty pages in a
// row, each with a new NextToken, and refuses the 11th (README: "more than
// 10 empty pages in a row ... internal, UPSTREAM_EMPTY_PAGES").
func TestDefaultsFollowTenEmptyPages(t *testing.T) {
	t.Parallel()
	for _, empty := range []int{10, 11} {
		t.Run(fmt.Sprint(empty), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			u := upstreamtest.ByToken(t, emptyThenRecord(empty))
			h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
			msgs, err := gatewaytest.Stream(ctx, h.Client(), &imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: "ecd-defaults0000001",
			})
			if empty <= 10 {
				if err != nil || len(gatewaytest.RecordsOf(msgs)) != 1 {
					t.Errorf("%d empty pages: %d records, %v; want the last page's record", empty, len(gatewaytest.RecordsOf(msgs)), err)
				}
				return
			}
			if connect.CodeOf(err) != connect.CodeInternal || gatewaytest.ErrorInfo(t, err).GetReason() != "UPSTREAM_EMPTY_PAGES" {
				t.Errorf("%d empty pages: %v, want Internal UPSTREAM_EMPTY_PAGES", empty, err)
			}
			if n := len(u.Requests()); n != 11 {
				t.Errorf("%d upstream calls, want 11: refused at the 11th empty page", n)
			}
		})
	}
}

// TestThrottlingHintBecomesTheRetryInfoDelay: a throttling answer whose
// TimeLeft hint (45 s) outlasts the default --upstream-max-wait of 30 s is
// not waited for: the caller gets Unavailable at once, with a RetryInfo
// delay of exactly the hint.
func TestThrottlingHintBecomesTheRetryInfoDelay(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // well under the 30 s a waited hint would take
	defer cancel()
	throttled := upstreamtest.Fail(http.StatusBadRequest, "Throttling.User")
	throttled.Header = http.Header{"X-Ratelimit-User-Api": {"Limit:10,Remain:0,TimeLeft:45000,Reset:1700000000"}}
	u := upstreamtest.InOrder(t, throttled)
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
	_, err := listOnce(ctx, h)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("List against a throttling upstream: %v, want Unavailable", err)
	}
	if got := gatewaytest.RetryInfo(t, err).GetRetryDelay().AsDuration(); got != 45*time.Second {
		t.Errorf("RetryInfo delay %v, want the upstream's TimeLeft of 45s", got)
	}
	if n := len(u.Requests()); n != 1 {
		t.Errorf("%d upstream attempts, want 1: a hint beyond the max wait is the caller's to wait", n)
	}
}
