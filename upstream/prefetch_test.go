package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
)

// hundredPerPage is an upstream of n pages of 100 records each; the page
// asked with token "" or "p<k>" returns NextToken "p<k+1>".
func hundredPerPage(pages int) func(int, upstream.DescribeInput) (*upstream.Page, error) {
	return func(_ int, in upstream.DescribeInput) (*upstream.Page, error) {
		k := 0
		if in.NextToken != "" {
			if _, err := fmt.Sscanf(in.NextToken, "p%d", &k); err != nil {
				return nil, err
			}
		}
		p := &upstream.Page{Records: make([]upstream.Record, 100)}
		for i := range p.Records {
			p.Records[i].ImageID = fmt.Sprintf("m-%d-%d", k, i)
		}
		if k+1 < pages {
			p.NextToken = fmt.Sprintf("p%d", k+1)
		}
		return p, nil
	}
}

func TestPrefetchYieldsTheSameSequence(t *testing.T) {
	t.Parallel()
	for _, opts := range [][]upstream.PagesOption{nil, {upstream.Prefetch()}} {
		api := &fakeAPI{fn: hundredPerPage(7)}
		var ids []string
		for p, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, opts...) {
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, p.Records[0].ImageID, p.Records[99].ImageID)
		}
		if len(ids) != 14 || ids[0] != "m-0-0" || ids[13] != "m-6-99" || len(api.inputs()) != 7 {
			t.Errorf("prefetch %v: %d ids (%v…), %d calls", opts != nil, len(ids), ids[:2], len(api.inputs()))
		}
	}
}

// TestPrefetchOverlapsTheNextCall proves the overlap: the consumer does not
// finish with page 1 until the call for page 2 has started.
func TestPrefetchOverlapsTheNextCall(t *testing.T) {
	t.Parallel()
	secondCall := make(chan struct{})
	api := &fakeAPI{fn: func(n int, in upstream.DescribeInput) (*upstream.Page, error) {
		if n == 2 {
			close(secondCall)
		}
		return hundredPerPage(3)(n, in)
	}}
	pages := 0
	for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, upstream.Prefetch()) {
		if err != nil {
			t.Fatal(err)
		}
		if pages++; pages == 1 {
			select {
			case <-secondCall:
			case <-time.After(10 * time.Second):
				t.Fatal("page 2 was not fetched while the consumer held page 1")
			}
		}
	}
	if pages != 3 {
		t.Errorf("%d pages", pages)
	}
}

func TestPrefetchRunsAtMostOnePageAhead(t *testing.T) {
	t.Parallel()
	api := &fakeAPI{fn: hundredPerPage(50)}
	held := 0
	for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, upstream.Prefetch()) {
		if err != nil {
			t.Fatal(err)
		}
		held++
		// Give the producer every chance to run ahead; it must block
		// after fetching one page more than the consumer has.
		deadline := time.Now().Add(20 * time.Millisecond)
		for time.Now().Before(deadline) {
			if calls := len(api.inputs()); calls > held+1 {
				t.Fatalf("%d calls while the consumer has taken %d pages", calls, held)
			}
		}
		if held == 5 {
			break
		}
	}
	// Breaking out stops the producer before Pages returns.
	if calls := len(api.inputs()); calls > 6 {
		t.Errorf("%d calls after the consumer stopped at page 5", calls)
	}
}

func TestLimitStopsFetching(t *testing.T) {
	t.Parallel()
	for _, opts := range [][]upstream.PagesOption{{upstream.Limit(150)}, {upstream.Limit(150), upstream.Prefetch()}, {upstream.Limit(200), upstream.Prefetch()}} {
		api := &fakeAPI{fn: hundredPerPage(10)}
		pages := 0
		for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, opts...) {
			if err != nil {
				t.Fatal(err)
			}
			pages++
		}
		if calls := len(api.inputs()); pages != 2 || calls != 2 {
			t.Errorf("options %d: %d pages in %d calls, want 2 in 2", len(opts), pages, calls)
		}
	}
}

func TestPrefetchCancelsTheFetchInFlight(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	api := apiFunc(func(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
		if in.NextToken == "" {
			return hundredPerPage(5)(1, in)
		}
		close(started)
		<-ctx.Done() // a slow upstream: only cancellation ends this call
		return nil, ctx.Err()
	})
	for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, upstream.Prefetch()) {
		if err != nil {
			t.Fatal(err)
		}
		<-started
		break // Pages must cancel the call for page 2 and wait for it
	}
}

func TestPrefetchDeliversErrorsAfterThePagesBefore(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	api := &fakeAPI{fn: func(n int, in upstream.DescribeInput) (*upstream.Page, error) {
		if n == 3 {
			return nil, boom
		}
		return hundredPerPage(10)(n, in)
	}}
	var pages int
	var errs []error
	for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, upstream.Prefetch()) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pages++
	}
	if pages != 2 || len(errs) != 1 || !errors.Is(errs[0], boom) {
		t.Errorf("%d pages, errors %v; want 2 pages then boom", pages, errs)
	}
}

func TestPrefetchEndsWithTheContextsError(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	stop := errors.New("caller gone")
	api := &fakeAPI{fn: hundredPerPage(1000)}
	var pages int
	var last error
	for _, err := range upstream.Pages(ctx, api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}, upstream.Prefetch()) {
		if err != nil {
			last = err
			break
		}
		if pages++; pages == 3 {
			cancel(stop)
		}
	}
	if last == nil {
		t.Fatalf("the sequence ended silently after %d of 1000 pages when the context ended", pages)
	}
	if !errors.Is(last, stop) && !errors.Is(last, context.Canceled) {
		t.Errorf("err = %v, want the context's", last)
	}
}
