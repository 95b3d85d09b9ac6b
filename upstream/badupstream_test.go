package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// Bad upstream data, end to end: a real HTTP server answers what a broken
// or hostile upstream might, and the real client and Pages must end every
// case in a coded error (ErrMalformedResponse, *PaginationError,
// *EmptyPagesError) or tolerate it where tolerating loses nothing. The
// rules and their reasons are in decode.go and pages.go.

const badRegion = "cn-hangzhou"

// badClient is the real client against the upstream at url, without
// retries: a bad answer is not retried anyway, and a retried one would
// muddle the request counts.
func badClient(url string) *upstream.Client {
	return upstream.NewClient(
		upstream.StaticCredentials{AccessKeyID: "LTAIbadupstream", AccessKeySecret: "bad-upstream-secret"},
		upstream.WithEndpoint(url),
		upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 1}),
	)
}

// one is a one-page script.
func onePage(body string) map[string]string { return map[string]string{"": body} }

type badOutcome int

const (
	tolerated  badOutcome = iota // no error
	malformed                    // errors.Is(err, ErrMalformedResponse)
	repeated                     // *PaginationError
	emptyPages                   // *EmptyPagesError
)

func (o badOutcome) String() string {
	return [...]string{"tolerated", "malformed", "*PaginationError", "*EmptyPagesError"}[o]
}

type badCase struct {
	name    string
	script  map[string]string // NextToken → 200 body
	want    badOutcome
	yielded int                                        // pages yielded before the end
	check   func(t *testing.T, pages []*upstream.Page) // more checks on the yielded pages
}

// badEmptyRun scripts a first page with the records first (raw JSON; none
// makes it empty too), then n empty pages with fresh tokens E1..En, then a
// last page with a record.
func badEmptyRun(n int, first ...string) map[string]string {
	s := map[string]string{}
	prev := ""
	s[prev] = upstreamtest.Page("R0", 5, "E1", first...)
	for i := 1; i <= n; i++ {
		next := fmt.Sprintf("E%d", i+1)
		s[fmt.Sprintf("E%d", i)] = upstreamtest.Page(fmt.Sprintf("R%d", i), 5, next)
	}
	s[fmt.Sprintf("E%d", n+1)] = upstreamtest.Page("RL", 5, "", upstreamtest.Record("m-last"))
	return s
}

func badWantStatus(statuses ...int) func(*testing.T, []*upstream.Page) {
	return func(t *testing.T, pages []*upstream.Page) {
		t.Helper()
		var got []int
		for _, r := range pages[0].Records {
			got = append(got, r.Status)
		}
		if !slices.Equal(got, statuses) {
			t.Errorf("statuses %v, want %v (kept as they came)", got, statuses)
		}
	}
}

func badCases() []badCase {
	valid := upstreamtest.Page("R1", 1, "", upstreamtest.Record("m-1"))
	hugeToken := strings.Repeat("t", upstream.MaxNextTokenLength+1)
	return []badCase{
		// ---- the whole body
		{name: "valid page", script: onePage(valid), want: tolerated, yielded: 1},
		{name: "body null", script: onePage(`null`), want: malformed},
		{name: "body {}: no RequestId, not an ECD answer", script: onePage(`{}`), want: malformed},
		{name: "body []", script: onePage(`[]`), want: malformed},
		{name: `body "x"`, script: onePage(`"x"`), want: malformed},
		{name: "body 42", script: onePage(`42`), want: malformed},
		{name: "empty body", script: onePage(``), want: malformed},
		{name: "whitespace body", script: onePage(" \n\t "), want: malformed},
		{name: "HTML from a proxy", script: onePage(`<html><body>200 OK</body></html>`), want: malformed},
		{name: "trailing garbage", script: onePage(valid + `x`), want: malformed},
		{name: "two objects", script: onePage(valid + valid), want: malformed},
		{name: "trailing whitespace", script: onePage(valid + " \r\n"), want: tolerated, yielded: 1},
		{name: "only a RequestId: an empty last page", script: onePage(`{"RequestId":"R"}`), want: tolerated, yielded: 1,
			check: func(t *testing.T, p []*upstream.Page) {
				if len(p[0].Records) != 0 || p[0].NextToken != "" || p[0].TotalCount != 0 {
					t.Errorf("page %+v, want empty and last", p[0])
				}
			}},
		{name: "unknown fields are ignored", script: onePage(`{"RequestId":"R","Extra":{"a":[1]},"ImageModifiedRecords":[{"Status":1,"New":true}]}`), want: tolerated, yielded: 1},
		// ---- RequestId
		{name: "RequestId null", script: onePage(`{"RequestId":null,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "RequestId empty", script: onePage(`{"RequestId":"","ImageModifiedRecords":[]}`), want: malformed},
		{name: "RequestId a number", script: onePage(`{"RequestId":5,"ImageModifiedRecords":[]}`), want: malformed},
		// ---- TotalCount
		{name: "TotalCount a string", script: onePage(`{"RequestId":"R","TotalCount":"3","ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount a fraction", script: onePage(`{"RequestId":"R","TotalCount":1.5,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount in exponent form", script: onePage(`{"RequestId":"R","TotalCount":1e3,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount negative", script: onePage(`{"RequestId":"R","TotalCount":-1,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount past int32", script: onePage(`{"RequestId":"R","TotalCount":2147483648,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount past int64", script: onePage(`{"RequestId":"R","TotalCount":99999999999999999999,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "TotalCount the int32 maximum", script: onePage(`{"RequestId":"R","TotalCount":2147483647,"ImageModifiedRecords":[]}`), want: tolerated, yielded: 1},
		{name: "TotalCount null is 0", script: onePage(`{"RequestId":"R","TotalCount":null,"ImageModifiedRecords":[]}`), want: tolerated, yielded: 1},
		// ---- NextToken
		{name: "NextToken a number", script: onePage(`{"RequestId":"R","NextToken":5,"ImageModifiedRecords":[]}`), want: malformed},
		{name: "NextToken an object", script: onePage(`{"RequestId":"R","NextToken":{},"ImageModifiedRecords":[]}`), want: malformed},
		{name: "NextToken null: the last page", script: onePage(`{"RequestId":"R","NextToken":null,"ImageModifiedRecords":[]}`), want: tolerated, yielded: 1},
		{name: "NextToken too long", script: onePage(upstreamtest.Page("R", 1, hugeToken, upstreamtest.Record("m-1"))), want: malformed},
		// ---- ImageModifiedRecords
		{name: "records an object", script: onePage(`{"RequestId":"R","ImageModifiedRecords":{}}`), want: malformed},
		{name: "records a string", script: onePage(`{"RequestId":"R","ImageModifiedRecords":"[]"}`), want: malformed},
		{name: "records are numbers", script: onePage(`{"RequestId":"R","ImageModifiedRecords":[1,2]}`), want: malformed},
		{name: "records are strings", script: onePage(`{"RequestId":"R","ImageModifiedRecords":["x"]}`), want: malformed},
		{name: "a record is null", script: onePage(`{"RequestId":"R","ImageModifiedRecords":[` + upstreamtest.Record("m-1") + `,null]}`), want: malformed},
		{name: "records null: none", script: onePage(`{"RequestId":"R","ImageModifiedRecords":null}`), want: tolerated, yielded: 1},
		{name: "records absent: none", script: onePage(`{"RequestId":"R","TotalCount":0}`), want: tolerated, yielded: 1},
		// ---- Status
		{name: "Status a string", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `"1"`))), want: malformed},
		{name: "Status a boolean", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `true`))), want: malformed},
		{name: "Status a fraction", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `1.5`))), want: malformed},
		{name: "Status 1e12 in exponent form", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `1e12`))), want: malformed},
		{name: "Status 10^12", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `1000000000000`))), want: malformed},
		{name: "Status past int32", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `2147483648`))), want: malformed},
		{name: "Status below int32", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `-2147483649`))), want: malformed},
		{name: "Status null", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", `null`))), want: malformed},
		{name: "Status absent", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Status", ``))), want: malformed},
		{name: "Status outside 0..2 is kept", want: tolerated, yielded: 1,
			script: onePage(upstreamtest.Page("R", 6, "", upstreamtest.RecordWith("Status", `7`), upstreamtest.RecordWith("Status", `-5`), upstreamtest.RecordWith("Status", `3`),
				upstreamtest.RecordWith("Status", `2147483647`), upstreamtest.RecordWith("Status", `-2147483648`), upstreamtest.RecordWith("Status", `0`))),
			check: badWantStatus(7, -5, 3, math.MaxInt32, math.MinInt32, 0)},
		// ---- UpdateTime
		{name: "UpdateTime yesterday", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"yesterday"`))), want: malformed},
		{name: "UpdateTime a number", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `1646275424851`))), want: malformed},
		{name: "UpdateTime without zone", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"2022-03-03T02:43:44"`))), want: malformed},
		{name: "UpdateTime the zero instant", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"0001-01-01T00:00:00Z"`))), want: malformed},
		{name: "UpdateTime before year 1 in UTC", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"0001-01-01T00:30:00+01:00"`))), want: malformed},
		{name: "UpdateTime after year 9999 in UTC", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"9999-12-31T23:30:00-01:00"`))), want: malformed},
		{name: "UpdateTime empty: kept without a time", want: tolerated, yielded: 1,
			script: onePage(upstreamtest.Page("R", 2, "", upstreamtest.RecordWith("UpdateTime", `""`), upstreamtest.RecordWith("UpdateTime", `null`))),
			check: func(t *testing.T, p []*upstream.Page) {
				if len(p[0].Records) != 2 || !p[0].Records[0].UpdateTime.IsZero() || !p[0].Records[1].UpdateTime.IsZero() {
					t.Errorf("records %+v, want both kept without a time", p[0].Records)
				}
			}},
		{name: "UpdateTime with an offset", want: tolerated, yielded: 1,
			script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("UpdateTime", `"2022-03-03T10:43:44.851+08:00"`))),
			check: func(t *testing.T, p []*upstream.Page) {
				if want := time.Date(2022, 3, 3, 2, 43, 44, 851e6, time.UTC); !p[0].Records[0].UpdateTime.Equal(want) {
					t.Errorf("UpdateTime %v, want %v", p[0].Records[0].UpdateTime, want)
				}
			}},
		// ---- string fields
		{name: "ImageName a number", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("ImageName", `5`))), want: malformed},
		{name: "Reason an array", script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("Reason", `["x"]`))), want: malformed},
		{name: "string fields null are empty", want: tolerated, yielded: 1,
			script: onePage(`{"RequestId":"R","ImageModifiedRecords":[{"Status":2,"ImageId":null,"ImageName":null,"NewImageId":null,"NewImageName":null,"Reason":null}]}`),
			check: func(t *testing.T, p []*upstream.Page) {
				if r := p[0].Records[0]; r != (upstream.Record{Status: 2}) {
					t.Errorf("record %+v, want only Status 2", r)
				}
			}},
		{name: "invalid UTF-8 becomes U+FFFD", want: tolerated, yielded: 1,
			script: onePage(upstreamtest.Page("R", 1, "", upstreamtest.RecordWith("ImageName", "\"a\xffb\\ud800c\""))),
			check: func(t *testing.T, p []*upstream.Page) {
				if got := p[0].Records[0].ImageName; got != "a\uFFFDb\uFFFDc" {
					t.Errorf("ImageName %q, want the bad bytes as U+FFFD", got)
				}
			}},
		// ---- across pages
		{name: "second page truncated", want: malformed, yielded: 1,
			script: map[string]string{"": upstreamtest.Page("R1", 2, "A", upstreamtest.Record("m-1")), "A": upstreamtest.Page("R2", 2, "", upstreamtest.Record("m-2"))[:30]}},
		{name: "TotalCount changes between pages", want: tolerated, yielded: 3,
			script: map[string]string{
				"":  upstreamtest.Page("R1", 2, "A", upstreamtest.Record("m-1")),
				"A": upstreamtest.Page("R2", 4, "B", upstreamtest.Record("m-2")),
				"B": upstreamtest.Page("R3", 3, "", upstreamtest.Record("m-3")),
			},
			check: func(t *testing.T, p []*upstream.Page) {
				if p[0].TotalCount != 2 || p[1].TotalCount != 4 || p[2].TotalCount != 3 {
					t.Errorf("TotalCounts %d, %d, %d, want each page's own", p[0].TotalCount, p[1].TotalCount, p[2].TotalCount)
				}
			}},
		{name: "negative TotalCount on a later page", want: malformed, yielded: 1,
			script: map[string]string{"": upstreamtest.Page("R1", 2, "A", upstreamtest.Record("m-1")), "A": upstreamtest.Page("R2", -2, "", upstreamtest.Record("m-2"))}},
		{name: "token does not advance", want: repeated, yielded: 1,
			script: map[string]string{"": upstreamtest.Page("R1", 2, "A", upstreamtest.Record("m-1")), "A": upstreamtest.Page("R2", 2, "A", upstreamtest.Record("m-2"))}},
		{name: "token cycle A→B→A", want: repeated, yielded: 2,
			script: map[string]string{
				"":  upstreamtest.Page("R1", 3, "A", upstreamtest.Record("m-1")),
				"A": upstreamtest.Page("R2", 3, "B", upstreamtest.Record("m-2")),
				"B": upstreamtest.Page("R3", 3, "A", upstreamtest.Record("m-3")),
			}},
		{name: "duplicate records across pages are passed on", want: tolerated, yielded: 2,
			script: map[string]string{"": upstreamtest.Page("R1", 2, "A", upstreamtest.Record("m-1")), "A": upstreamtest.Page("R2", 2, "", upstreamtest.Record("m-1"))},
			check: func(t *testing.T, p []*upstream.Page) {
				if p[0].Records[0] != p[1].Records[0] {
					t.Errorf("records %+v and %+v, want the duplicate as sent", p[0].Records[0], p[1].Records[0])
				}
			}},
		{name: "empty last page", want: tolerated, yielded: 2,
			script: map[string]string{"": upstreamtest.Page("R1", 1, "A", upstreamtest.Record("m-1")), "A": upstreamtest.Page("R2", 1, "")}},
		{name: fmt.Sprintf("%d empty pages in a row are followed", upstream.MaxEmptyPages), want: tolerated,
			script: badEmptyRun(upstream.MaxEmptyPages, upstreamtest.Record("m-0")), yielded: upstream.MaxEmptyPages + 2},
		{name: fmt.Sprintf("%d empty pages in a row from the start are followed", upstream.MaxEmptyPages), want: tolerated,
			script: badEmptyRun(upstream.MaxEmptyPages - 1), yielded: upstream.MaxEmptyPages + 1},
		{name: fmt.Sprintf("%d empty pages in a row from the start", upstream.MaxEmptyPages+1), want: emptyPages,
			script: badEmptyRun(upstream.MaxEmptyPages), yielded: upstream.MaxEmptyPages},
		{name: fmt.Sprintf("%d empty pages in a row after a full one", upstream.MaxEmptyPages+1), want: emptyPages,
			script: badEmptyRun(upstream.MaxEmptyPages+1, upstreamtest.Record("m-0")), yielded: 1 + upstream.MaxEmptyPages},
		{name: "a page with records resets the empty run", want: tolerated, yielded: 2*upstream.MaxEmptyPages + 3,
			script: func() map[string]string {
				s := map[string]string{}
				tok := func(i int) string {
					if i == 2*upstream.MaxEmptyPages+3 {
						return ""
					}
					return "T" + strconv.Itoa(i)
				}
				prev := ""
				for i := 1; i <= 2*upstream.MaxEmptyPages+3; i++ {
					var recs []string
					if i == 1 || i == upstream.MaxEmptyPages+2 || i == 2*upstream.MaxEmptyPages+3 {
						recs = []string{upstreamtest.Record("m-" + strconv.Itoa(i))}
					}
					s[prev] = upstreamtest.Page("R"+strconv.Itoa(i), 3, tok(i), recs...)
					prev = tok(i)
				}
				return s
			}()},
	}
}

func TestBadUpstreamData(t *testing.T) {
	t.Parallel()
	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.ByToken(t, tc.script)
			var pages []*upstream.Page
			var errs []error
			for p, err := range upstream.Pages(t.Context(), badClient(up.URL), upstream.DescribeInput{RegionID: badRegion, DesktopID: "ecd-bad"}) {
				if err != nil {
					errs = append(errs, err)
					continue
				}
				pages = append(pages, p)
			}
			if len(pages) != tc.yielded {
				t.Errorf("yielded %d pages, want %d", len(pages), tc.yielded)
			}
			switch {
			case tc.want == tolerated:
				if len(errs) != 0 {
					t.Fatalf("errors %v, want none (tolerated)", errs)
				}
			case len(errs) != 1:
				t.Fatalf("errors %v, want exactly one %v", errs, tc.want)
			}
			var err error
			if len(errs) == 1 {
				err = errs[0]
			}
			switch tc.want {
			case malformed:
				if !errors.Is(err, upstream.ErrMalformedResponse) {
					t.Errorf("error %v (%T), want ErrMalformedResponse", err, err)
				}
				if _, ok := errors.AsType[*upstream.APIError](err); ok {
					t.Errorf("error %v is an *APIError, want a malformed answer", err)
				}
			case repeated:
				if _, ok := errors.AsType[*upstream.PaginationError](err); !ok {
					t.Errorf("error %v (%T), want *PaginationError", err, err)
				}
			case emptyPages:
				e, ok := errors.AsType[*upstream.EmptyPagesError](err)
				if !ok {
					t.Fatalf("error %v (%T), want *EmptyPagesError", err, err)
				}
				if e.Empty != upstream.MaxEmptyPages+1 {
					t.Errorf("EmptyPagesError.Empty = %d, want %d", e.Empty, upstream.MaxEmptyPages+1)
				}
				if want := fmt.Sprintf("%d empty pages in a row", e.Empty); !strings.Contains(err.Error(), want) {
					t.Errorf("message %q does not say %q", err, want)
				}
				if !errors.Is(err, upstream.ErrMalformedResponse) {
					t.Errorf("errors.Is(%v, ErrMalformedResponse) = false, want true", err)
				}
			}
			// Every page was asked for once, by the token of the page before.
			wantTokens := []string{""}
			for _, p := range pages {
				if p.NextToken != "" {
					wantTokens = append(wantTokens, p.NextToken)
				}
			}
			if tc.want == tolerated {
				wantTokens = wantTokens[:len(pages)]
			}
			if got := up.Tokens(); !slices.Equal(got, wantTokens) {
				t.Errorf("requested tokens %q, want %q", got, wantTokens)
			}
			if got := up.Requests(); slices.ContainsFunc(got, func(r upstreamtest.Request) bool { return r.MaxResults != "100" }) {
				t.Errorf("MaxResults sent %q, want 100 on every call", got)
			}
			for i, p := range pages {
				if p.RequestID == "" {
					t.Errorf("page %d yielded without a RequestId", i+1)
				}
			}
			if tc.check != nil && len(pages) > 0 {
				tc.check(t, pages)
			}
		})
	}
}

// TestBadUpstreamTruncatedAnywhere cuts a valid two-record page at every
// byte: each cut is malformed, none panics, none is taken for a shorter
// page.
func TestBadUpstreamTruncatedAnywhere(t *testing.T) {
	t.Parallel()
	full := upstreamtest.Page("R-cut", 2, "NEXT", upstreamtest.Record("m-1"), upstreamtest.RecordWith("UpdateTime", `"2022-03-03T10:43:44.851+08:00"`))
	bodies := map[string]string{}
	for cut := range len(full) {
		bodies[strconv.Itoa(cut)] = full[:cut]
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The cut is in the desktop id; every request is a first page.
		body := bodies[strings.TrimPrefix(r.URL.Query().Get("DesktopId"), "ecd-cut")]
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	c := badClient(srv.URL)
	for cut := range len(full) {
		p, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: badRegion, DesktopID: "ecd-cut" + strconv.Itoa(cut)})
		if !errors.Is(err, upstream.ErrMalformedResponse) {
			t.Errorf("cut at %d (%q): page %+v, error %v; want ErrMalformedResponse", cut, full[:cut], p, err)
		}
	}
	// And uncut it is fine.
	if _, err := upstream.DecodePage([]byte(full)); err != nil {
		t.Fatalf("the uncut page: %v", err)
	}
}

// TestBadUpstreamSlowDrip: an upstream that sends its body a byte every
// 50 ms must not hold a call past the caller's deadline, nor leave a
// goroutine behind.
func TestBadUpstreamSlowDrip(t *testing.T) {
	// Not parallel: it counts goroutines.
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		body := upstreamtest.Page("R-slow", 1, "", upstreamtest.Record("m-1"))
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i = (i + 1) % len(body) {
			_, _ = io.WriteString(w, body[i:i+1])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-done:
				return
			case <-tick.C:
			}
		}
	}))
	transport := upstream.NewTransport()
	before := goleak.IgnoreCurrent()

	for _, via := range []string{"client", "Pages"} {
		c := upstream.NewClient(
			upstream.StaticCredentials{AccessKeyID: "LTAIslow", AccessKeySecret: "slow-secret"},
			upstream.WithEndpoint(srv.URL),
			upstream.WithTransport(transport),
			// Retries would not help a slow drip either; the deadline ends
			// all of them.
			upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}),
		)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		in := upstream.DescribeInput{RegionID: badRegion, DesktopID: "ecd-slow"}
		start := time.Now()
		var err error
		if via == "client" {
			_, err = c.DescribeImageModifiedRecords(ctx, in)
		} else {
			for _, e := range upstream.Pages(ctx, c, in) {
				if e != nil {
					err = e
				}
			}
		}
		elapsed := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: error %v, want context.DeadlineExceeded", via, err)
		}
		if elapsed > 2*time.Second {
			t.Errorf("%s: the call took %v with a 300 ms deadline", via, elapsed)
		}
	}
	close(done)
	srv.Close()
	transport.CloseIdleConnections()
	// Goroutines of the call, the connection and the handler all end;
	// goleak waits a bounded while for the connection's to notice the close.
	goleak.VerifyNone(t, before)
}
